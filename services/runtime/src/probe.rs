//! `<service> probe`: asks the running server on this machine whether it is ready, for
//! container health checks in images that hold no shell and no curl.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::parse_seconds;

/// Where and how long to ask.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The server's port on 127.0.0.1.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// The route asked; 200 is healthy.
    #[arg(long, default_value = "/v2/health/ready")]
    pub path: String,

    /// Longest wait for the answer, in seconds.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Exits 0 when the server answers `path` with 200, else 1 with the reason on stderr.
pub fn run(args: &ProbeArgs) -> ExitCode {
    match status(args) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("unhealthy: {} answered {status}", args.path);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: 127.0.0.1:{}: {e}", args.port);
            ExitCode::FAILURE
        }
    }
}

fn status(args: &ProbeArgs) -> std::io::Result<u16> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let mut stream = TcpStream::connect_timeout(&address, args.timeout)?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        args.path
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}
