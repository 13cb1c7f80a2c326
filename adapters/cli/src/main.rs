//! `flowee-cli`: decode and encode Flowee frames as JSON.

use clap::{Parser, Subcommand};
use flowee_cli::json;
use serde_json::Value as Json;
use std::io::Read;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flowee-cli",
    version,
    about = "Tools for Flowee's message protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode a frame stream (or with --cmf, one CMF document) from hex into JSON.
    Decode {
        /// Read a bare CMF document instead of a frame stream.
        #[arg(long)]
        cmf: bool,
        /// Hex bytes (spaces allowed, also between arguments), or `-` to read them from stdin.
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
    },
    /// Encode a JSON message (or with --cmf, a JSON token array) into the hex the C++ would send.
    Encode {
        /// Encode a token array into a bare CMF document.
        #[arg(long)]
        cmf: bool,
        /// JSON text, or `-` to read it from stdin.
        json: String,
    },
}

/// Exit status for bad input and protocol errors.
const FAILURE: u8 = 2;

fn argument(arg: String) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(text)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Decode { cmf, hex } => {
            let bytes = json::from_hex(&argument(hex.join(" "))?).map_err(|e| e.to_string())?;
            if cmf {
                return match json::cmf_to_json(&bytes) {
                    Ok(tokens) => {
                        println!("{tokens}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        println!(
                            "{}",
                            serde_json::json!({ "error": e.kind.name(), "detail": e.to_string() })
                        );
                        Ok(ExitCode::from(FAILURE))
                    }
                };
            }
            let (lines, ok) = json::decode_stream(&bytes);
            for line in lines {
                println!("{line}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILURE)
            })
        }
        Command::Encode { cmf, json: text } => {
            let value: Json =
                serde_json::from_str(&argument(text)?).map_err(|e| format!("bad JSON: {e}"))?;
            let bytes = if cmf {
                json::json_to_cmf(&value)
            } else {
                json::json_to_message(&value).and_then(|m| json::encode_message(&m))
            }
            .map_err(|e| e.to_string())?;
            println!("{}", json::to_hex(&bytes));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("flowee-cli: {msg}");
            ExitCode::from(FAILURE)
        }
    }
}
