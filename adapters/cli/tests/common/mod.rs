//! What the tests that run `flowee-cli serve` as a process share: starting it, its log, its
//! memory and CPU from `/proc`, connections from chosen loopback addresses, and a high
//! enough open-file limit. Linux only.
#![allow(dead_code, unreachable_pub)]

use smol::Async;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `/proc/<pid>/stat` counts CPU time in these per second (USER_HZ, fixed by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// CPU seconds used so far in user space and in the kernel, from a `/proc/…/stat` file (a
/// process's, or a thread's under `/proc/self/task/`).
pub fn cpu_split_secs(stat_file: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(stat_file).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the
    // 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<u64>().unwrap() as f64 / USER_HZ;
    (ticks(11), ticks(12))
}

/// Raises the open-file limit as far as the hard limit allows (up to 65,536).
pub fn raise_fd_limit(need: u64) {
    let limit = rlimit::increase_nofile_limit(65_536).expect("raise the open-file limit");
    assert!(
        limit >= need,
        "need at least {need} open files, the hard limit is {limit}"
    );
}

/// A `flowee-cli serve` process, its address and its log; killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `flowee-cli serve --listen 127.0.0.1:0` with more arguments.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowee-cli"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flowee-cli serve starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut first = String::new();
        stderr
            .read_line(&mut first)
            .expect("serve says where it listens");
        let addr = first
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server { child, addr, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    /// The most resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:").unwrap_or(0)
    }

    /// User plus system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        let (user, system) = self.cpu_split_secs();
        user + system
    }

    /// CPU seconds used so far in user space and in the kernel.
    pub fn cpu_split_secs(&self) -> (f64, f64) {
        cpu_split_secs(&format!("/proc/{}/stat", self.pid()))
    }

    /// Connections the server holds open, from its log.
    pub fn open_connections(&self) -> usize {
        let log = self.log.lock().unwrap();
        let opened = log.iter().filter(|l| l.contains(": open ")).count();
        let closed = log.iter().filter(|l| l.contains(": close ")).count();
        opened.saturating_sub(closed)
    }

    /// Stops it and returns its log.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's RSS four times a second until [`RssSampler::samples`].
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let t0 = Instant::now();
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
                    s.lock().unwrap().push((t0.elapsed(), kib));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        RssSampler { samples, stop }
    }

    /// Stops and returns (time since start, KiB) samples.
    pub fn samples(&self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.samples.lock().unwrap().clone()
    }
}

/// A TCP connection from a chosen loopback address (any 127.x.y.z works on Linux).
pub async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<Async<TcpStream>> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS
        Err(e) => return Err(e),
    }
    let stream = Async::new(TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    stream.get_ref().set_nodelay(true)?;
    Ok(stream)
}

/// A read from `stream`, or `None` if nothing came within `wait`.
pub async fn read_within(
    stream: &mut Async<TcpStream>,
    buf: &mut [u8],
    wait: Duration,
) -> Option<std::io::Result<usize>> {
    use smol::future::FutureExt;
    use smol::io::AsyncReadExt;
    async { Some(stream.read(buf).await) }
        .or(async {
            smol::Timer::after(wait).await;
            None
        })
        .await
}
