//! `kiln-tcp-relay HOST:PORT`: joins stdin/stdout to a TCP connection.
//!
//! QEMU's `guestfwd=tcp:IP:PORT-cmd:COMMAND` starts COMMAND once per guest connection with
//! that connection on its stdin and stdout; this relays it to a server on the host (the
//! QEMU tests' fake metadata service). It prints nothing of its own: any byte on stdout
//! would reach the guest. When the host side cannot be reached it exits with status 1,
//! which the guest sees as the connection closing without an answer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(target) = std::env::args().nth(1) else {
        return ExitCode::from(2);
    };
    let Ok(sock) = TcpStream::connect(target.as_str()) else {
        return ExitCode::FAILURE;
    };
    let Ok(mut to_host) = sock.try_clone() else {
        return ExitCode::FAILURE;
    };
    // Guest → host. When the guest stops sending, half-close so the server sees the end
    // of the request but can still answer.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_host.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_host.shutdown(Shutdown::Write);
    });
    // Host → guest, until the server closes; then exit, which closes the guest's side.
    let mut from_host = sock;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 8192];
    loop {
        match from_host.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
