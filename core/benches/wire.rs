//! Wire-layer throughput: decoding and encoding streams of frames with 100-byte and 8000-byte
//! bodies, next to a plain memcpy of the same bytes measured in the same run.
//!
//! `cargo bench -p flowee-proto --bench wire`. Each benchmark reports frames/s (items) and
//! bytes/s; compare a row with the `memcpy` row of the same size.

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use flowee_proto::frame::{FrameDecoder, FrameEncoder};
use flowee_proto::header::Header;

fn main() {
    divan::main();
}

const SIZES: [usize; 2] = [100, 8000];
/// About 1 MB of frames per iteration.
fn frames_for(body: usize) -> usize {
    (1 << 20) / (body + 10)
}

fn stream(body: usize) -> (Vec<u8>, usize) {
    let n = frames_for(body);
    let header = Header::new(3, 2).with_int(11, 7).unwrap();
    let payload: Vec<u8> = (0..body).map(|i| i as u8).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        FrameEncoder::new()
            .encode(&header, &payload, &mut out)
            .unwrap();
    }
    (out, n)
}

/// Decodes a stream delivered in 64 KiB reads, as from a socket: frames cut by a read boundary
/// go through the decoder's buffer.
#[divan::bench(args = SIZES)]
fn decode(bencher: Bencher<'_, '_>, body: usize) {
    let (wire, n) = stream(body);
    let mut decoder = FrameDecoder::new();
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(wire.len()))
        .bench_local(|| {
            let mut frames = 0;
            let mut sum = 0usize;
            for read in wire.chunks(64 * 1024) {
                let mut input = read;
                while let Some(f) = decoder.decode(&mut input).unwrap() {
                    frames += 1;
                    sum += f.body.len() + f.header.service_id as usize;
                }
            }
            assert_eq!(frames, n);
            black_box(sum)
        });
}

/// Encodes the same frames into a reused buffer.
#[divan::bench(args = SIZES)]
fn encode(bencher: Bencher<'_, '_>, body: usize) {
    let (wire, n) = stream(body);
    let header = Header::new(3, 2).with_int(11, 7).unwrap();
    let payload: Vec<u8> = (0..body).map(|i| i as u8).collect();
    let encoder = FrameEncoder::new();
    let mut out = Vec::with_capacity(wire.len());
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(wire.len()))
        .bench_local(|| {
            out.clear();
            for _ in 0..n {
                encoder
                    .encode(black_box(&header), black_box(&payload), &mut out)
                    .unwrap();
            }
            black_box(out.len())
        });
}

/// The baseline: copying the same bytes once.
#[divan::bench(args = SIZES)]
fn memcpy(bencher: Bencher<'_, '_>, body: usize) {
    let (wire, n) = stream(body);
    let mut out = vec![0u8; wire.len()];
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(wire.len()))
        .bench_local(|| {
            out.copy_from_slice(black_box(&wire));
            black_box(out[0])
        });
}
