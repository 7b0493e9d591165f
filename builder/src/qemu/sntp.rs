//! A minimal SNTP server (RFC 4330, server mode) for the guests' timesyncd.
//!
//! The QEMU profile points timesyncd at 10.0.2.2, the host as seen through
//! QEMU's user-mode network, which delivers the guest's 10.0.2.2:123 to the
//! host's 127.0.0.1:123, and the node's preflight waits for a synced clock.
//! `kiln run` answers there itself ([`serve_for_guests`]) and the QEMU tests
//! do the same, so a booted image's preflight passes with nothing else running
//! on the host.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Where QEMU's user network delivers the guest's 10.0.2.2:123 (the host's
/// loopback), so where a server must listen for the guests' timesyncd.
pub const HOST_NTP_ADDR: &str = "127.0.0.1:123";

/// An SNTP server answering on its own thread for the life of the process.
#[derive(Debug)]
pub struct SntpServer {
    addr: SocketAddr,
}

impl SntpServer {
    /// Binds `addr` (port 0 picks a free one) and answers requests on a
    /// background thread until the process ends.
    pub fn start(addr: &str) -> io::Result<SntpServer> {
        let socket = UdpSocket::bind(addr)?;
        let addr = socket.local_addr()?;
        std::thread::Builder::new()
            .name("sntp".into())
            .spawn(move || serve(&socket))?;
        Ok(SntpServer { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(socket: &UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let received = ntp_now();
        if let Some(reply) = answer(&buf[..n], received, ntp_now()) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// Now as a 64-bit NTP timestamp (seconds since 1900 . 32-bit fraction).
fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The server's reply to one client packet, or `None` for anything that is
/// not a client request (mode 3) of NTP version 1-4.
pub fn answer(request: &[u8], received: u64, transmit: u64) -> Option<[u8; 48]> {
    if request.len() < 48 {
        return None;
    }
    let version = (request[0] >> 3) & 0x7;
    let mode = request[0] & 0x7;
    if mode != 3 || !(1..=4).contains(&version) {
        return None;
    }
    let mut r = [0u8; 48];
    // LI 0 (no warning), the client's version, mode 4 (server).
    r[0] = (version << 3) | 4;
    r[1] = 2; // stratum 2: synced to an upstream server
    r[2] = request[2]; // poll: echo the client's
    r[3] = (-20i8) as u8; // precision ~1 µs
                          // Root delay and dispersion: small, so the root distance timesyncd
                          // checks stays far below its limit.
    r[4..8].copy_from_slice(&0x0000_0010u32.to_be_bytes());
    r[8..12].copy_from_slice(&0x0000_0010u32.to_be_bytes());
    // Reference id for stratum 2: the upstream's IPv4 address.
    r[12..16].copy_from_slice(&[127, 0, 0, 1]);
    r[16..24].copy_from_slice(&received.to_be_bytes()); // reference
    r[24..32].copy_from_slice(&request[40..48]); // originate = client's transmit
    r[32..40].copy_from_slice(&received.to_be_bytes());
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    Some(r)
}

/// How the guests' NTP requests get answered.
#[derive(Debug)]
pub enum GuestNtp {
    /// This process serves on [`HOST_NTP_ADDR`] (for as long as it runs).
    Serving(SntpServer),
    /// Something already answers SNTP there (another `kiln run`, the test
    /// harness, or the host's own NTP server).
    AlreadyServed,
    /// Nobody answers, and this process cannot listen there.
    Unavailable(io::Error),
}

/// Whether an SNTP server answers at `addr` within `wait`.
pub fn answers(addr: &str, wait: Duration) -> bool {
    let Ok(client) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let mut q = [0u8; 48];
    q[0] = (4 << 3) | 3;
    if client.set_read_timeout(Some(wait)).is_err() || client.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(client.recv_from(&mut buf), Ok((n, _)) if n >= 48 && buf[0] & 7 == 4)
}

/// Makes sure the guests' 10.0.2.2:123 gets answers: serves on
/// [`HOST_NTP_ADDR`] if the port is free (needs root or
/// CAP_NET_BIND_SERVICE), else checks that someone else answers there.
pub fn serve_for_guests() -> GuestNtp {
    match SntpServer::start(HOST_NTP_ADDR) {
        Ok(s) => GuestNtp::Serving(s),
        Err(e) if answers(HOST_NTP_ADDR, Duration::from_millis(500)) => {
            let _ = e;
            GuestNtp::AlreadyServed
        }
        Err(e) => GuestNtp::Unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn request(version: u8, transmit: u64) -> [u8; 48] {
        let mut q = [0u8; 48];
        q[0] = (version << 3) | 3;
        q[2] = 6;
        q[40..48].copy_from_slice(&transmit.to_be_bytes());
        q
    }

    #[test]
    fn answers_a_real_udp_client_with_the_current_time() {
        let server = SntpServer::start("127.0.0.1:0").unwrap();
        assert!(answers(&server.addr().to_string(), Duration::from_secs(5)));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mine = 0x1234_5678_9abc_def0u64;
        client.send_to(&request(4, mine), server.addr()).unwrap();
        let mut buf = [0u8; 100];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (48, server.addr()));
        assert_eq!(buf[0] >> 6, 0, "leap indicator must say synced");
        assert_eq!((buf[0] >> 3) & 7, 4, "version");
        assert_eq!(buf[0] & 7, 4, "mode server");
        assert_eq!(buf[1], 2, "stratum");
        assert_eq!(&buf[24..32], &mine.to_be_bytes(), "originate");
        let transmit = u64::from_be_bytes(buf[40..48].try_into().unwrap());
        let unix = (transmit >> 32) - NTP_UNIX_OFFSET;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(unix) <= 2, "server says {unix}, host {now}");
        let receive = u64::from_be_bytes(buf[32..40].try_into().unwrap());
        assert!(receive <= transmit && receive > 0);
    }

    /// An independent client: python's struct/socket speaking SNTP v3, as
    /// ntpdate and older clients do.
    #[test]
    fn python_sntp_client_reads_the_time() {
        let server = SntpServer::start("127.0.0.1:0").unwrap();
        let script = format!(
            "import socket,struct,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(5)\n\
             s.sendto(b'\\x1b'+47*b'\\0',('127.0.0.1',{}))\n\
             d=s.recv(48); li_vn_mode,stratum=d[0],d[1]\n\
             t=struct.unpack('!I',d[40:44])[0]-2208988800\n\
             assert li_vn_mode==0x1c, li_vn_mode\n\
             assert stratum==2\n\
             assert abs(t-time.time())<3, (t,time.time())\n\
             print('ok',t)\n",
            server.addr().port()
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn ignores_what_is_not_a_client_request() {
        let now = ntp_now();
        assert!(answer(&[0u8; 10], now, now).is_none());
        let mut server_mode = request(4, 1);
        server_mode[0] = (4 << 3) | 4;
        assert!(answer(&server_mode, now, now).is_none());
        assert!(answer(&request(0, 1), now, now).is_none());
    }
}
