//! TLS for the two network sinks, in pure Rust: rustls with the ring provider, so a build needs
//! no system OpenSSL.
//!
//! [`client_config`] is the one client setting both use: the server's certificate is checked
//! against the system's trust store, or only against the PEM file named by `SSL_CERT_FILE`
//! (or the folders in `SSL_CERT_DIR`) when set, as `rustls-native-certs` reads them. FTPS gets
//! it as a [`suppaftp::RustlsConnector`] ([`ftps_connector`]). AMQPS goes through
//! [`open_amqps`]: amiquip's own TLS is native-tls only, so the TLS session is made here, the
//! handshake blocking and bounded by the connection timeout, and amiquip's I/O loop is handed
//! an [`AmqpsStream`], a non-blocking TLS stream over a mio 0.6 socket that it polls as it would
//! a plain TCP stream.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::config::AmqpConfig;

/// The AMQP heartbeat, in seconds, as `AmqpConfig::url` asks for it on plain connections.
const AMQP_HEARTBEAT_S: u16 = 30;

/// The client setting for both sinks: TLS 1.2 and 1.3 with the ring provider, servers checked
/// against the system's trust store or `SSL_CERT_FILE` / `SSL_CERT_DIR`.
pub fn client_config() -> anyhow::Result<Arc<ClientConfig>> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        let source = match std::env::var_os("SSL_CERT_FILE") {
            Some(file) => format!("SSL_CERT_FILE={}", file.to_string_lossy()),
            None => "the system's trust store".to_string(),
        };
        anyhow::bail!(
            "no trusted certificate found in {source}{}{}",
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        );
    }
    for e in &found.errors {
        log::warn!("while loading trusted certificates: {e}");
    }
    with_roots(roots)
}

/// A client setting that trusts exactly `roots`.
pub fn with_roots(roots: RootCertStore) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The connector for suppaftp's explicit FTPS (`into_secure`).
pub fn ftps_connector() -> anyhow::Result<suppaftp::RustlsConnector> {
    Ok(suppaftp::RustlsConnector::from(client_config()?))
}

/// Opens an AMQPS connection to the broker of `cfg`: TCP and the TLS handshake within
/// `timeout`, then the AMQP handshake with the same options `AmqpConfig::url` gives a plain
/// connection (user, password, vhost, connection timeout, heartbeat).
pub fn open_amqps(cfg: &AmqpConfig, timeout: Duration) -> anyhow::Result<amiquip::Connection> {
    let tls = client_config()?;
    let name = ServerName::try_from(cfg.host.clone())
        .with_context(|| format!("{} is not a valid TLS server name", cfg.host))?;
    first_address(cfg, |addr| {
        let stream = AmqpsStream::connect(addr, name.clone(), tls.clone(), timeout)?;
        // "Insecure" in amiquip's sense: it adds no TLS of its own; the stream brings it.
        Ok(amiquip::Connection::insecure_open_stream(
            stream,
            amqp_options(cfg, timeout),
            amiquip::ConnectionTuning::default(),
        )?)
    })
}

/// Opens the broker connection `cfg` asks for (AMQPS or plain AMQP); the error names the
/// broker and the vhost.
pub fn open_broker(cfg: &AmqpConfig, timeout: Duration) -> anyhow::Result<amiquip::Connection> {
    let opened = if cfg.tls {
        open_amqps(cfg, timeout)
    } else {
        open_amqp(cfg, timeout)
    };
    opened.with_context(|| {
        format!(
            "cannot connect to the broker at {}:{} vhost {}",
            cfg.host, cfg.port, cfg.vhost
        )
    })
}

/// Opens a plain AMQP connection on a socket with `TCP_NODELAY`: a publish and its confirm
/// are small frames, which Nagle's algorithm would hold back until the broker's delayed ACK
/// (about 40 ms on loopback).
pub fn open_amqp(cfg: &AmqpConfig, timeout: Duration) -> anyhow::Result<amiquip::Connection> {
    first_address(cfg, |addr| {
        let tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_nonblocking(true)?;
        let stream = mio::net::TcpStream::from_stream(tcp)?;
        Ok(amiquip::Connection::insecure_open_stream(
            stream,
            amqp_options(cfg, timeout),
            amiquip::ConnectionTuning::default(),
        )?)
    })
}

/// The connection `open` makes to the first of the broker's addresses that takes it, or the
/// last error.
fn first_address(
    cfg: &AmqpConfig,
    mut open: impl FnMut(SocketAddr) -> anyhow::Result<amiquip::Connection>,
) -> anyhow::Result<amiquip::Connection> {
    let addrs: Vec<SocketAddr> = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", cfg.host))?
        .collect();
    let mut last_err = None;
    for addr in addrs {
        match open(addr) {
            Ok(conn) => return Ok(conn),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{} has no address", cfg.host)))
}

fn amqp_options(cfg: &AmqpConfig, timeout: Duration) -> amiquip::ConnectionOptions<amiquip::Auth> {
    amiquip::ConnectionOptions::default()
        .auth(amiquip::Auth::Plain {
            username: cfg.user.clone(),
            password: cfg.password.clone(),
        })
        .virtual_host(cfg.vhost.as_str())
        .connection_timeout(Some(timeout))
        .heartbeat(AMQP_HEARTBEAT_S)
}

/// A TLS client stream over a non-blocking mio 0.6 socket, for amiquip's I/O loop.
///
/// The loop is edge-triggered: it reads until `WouldBlock` and writes until its buffer is
/// empty or `WouldBlock`. So `read` returns `WouldBlock` only once the socket has none left,
/// and no TLS record is left behind in rustls' buffer when `write` says it took the data: the
/// loop would not call again until it has more to send. Records the socket cannot take at once
/// are waited for, at most `stall_limit` (a broker that takes no data for that long fails the
/// connection, as the publish confirm would).
pub struct AmqpsStream {
    conn: ClientConnection,
    tcp: mio::net::TcpStream,
    stall_limit: Duration,
}

impl AmqpsStream {
    /// Connects to `addr` and completes the TLS handshake with `name`, within `timeout`.
    pub fn connect(
        addr: SocketAddr,
        name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> anyhow::Result<AmqpsStream> {
        let deadline = Instant::now() + timeout;
        let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        // Small frames (a publish, its confirm) go out at once, not after a delayed ACK.
        tcp.set_nodelay(true)?;
        let mut conn = ClientConnection::new(tls, name).context("cannot start TLS")?;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("TLS handshake with {addr} timed out");
            }
            tcp.set_read_timeout(Some(left))?;
            tcp.set_write_timeout(Some(left))?;
            conn.complete_io(&mut tcp).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    anyhow::anyhow!("TLS handshake with {addr} timed out")
                }
                _ => anyhow::Error::new(e).context(format!("TLS handshake with {addr} failed")),
            })?;
        }
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        // Sets the socket non-blocking.
        let tcp = mio::net::TcpStream::from_stream(tcp)?;
        Ok(AmqpsStream {
            conn,
            tcp,
            stall_limit: timeout,
        })
    }

    /// Writes out the TLS records rustls holds, or `WouldBlock` if the socket cannot take
    /// them all now.
    fn write_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Writes out the TLS records rustls holds, waiting for the socket at most `stall_limit`.
    fn write_records_waiting(&mut self) -> io::Result<()> {
        let t0 = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            match self.write_records() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if t0.elapsed() >= self.stall_limit {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the broker takes no data",
                        ));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                r => return r,
            }
        }
    }
}

impl Read for AmqpsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Plaintext rustls already holds first; `Ok(0)` is the broker's close_notify.
            match self.conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // `WouldBlock` here means the socket is drained, as the edge-triggered loop needs.
            if self.conn.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert that says why, if the socket takes it.
                let _ = self.conn.write_tls(&mut self.tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // What the records ask for (a key update) goes out now: the loop may not write
            // again soon.
            self.write_records_waiting()?;
        }
    }
}

impl Write for AmqpsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Records left from before go first; a socket that cannot take them takes no more.
        self.write_records()?;
        let n = self.conn.writer().write(buf)?;
        self.write_records_waiting()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_records()
    }
}

impl mio::Evented for AmqpsStream {
    fn register(
        &self,
        poll: &mio::Poll,
        token: mio::Token,
        interest: mio::Ready,
        opts: mio::PollOpt,
    ) -> io::Result<()> {
        self.tcp.register(poll, token, interest, opts)
    }

    fn reregister(
        &self,
        poll: &mio::Poll,
        token: mio::Token,
        interest: mio::Ready,
        opts: mio::PollOpt,
    ) -> io::Result<()> {
        self.tcp.reregister(poll, token, interest, opts)
    }

    fn deregister(&self, poll: &mio::Poll) -> io::Result<()> {
        self.tcp.deregister(poll)
    }
}

impl amiquip::IoStream for AmqpsStream {}

impl Drop for AmqpsStream {
    fn drop(&mut self) {
        // Best effort: the AMQP close has already ended the session.
        self.conn.send_close_notify();
        let _ = self.conn.write_tls(&mut self.tcp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A self-signed certificate for 127.0.0.1: (server setting, a root store trusting it).
    fn server_and_roots() -> (Arc<rustls::ServerConfig>, RootCertStore) {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        (Arc::new(server), roots)
    }

    /// A TLS server on loopback that reads `n` bytes, sends them back, and waits for the close.
    fn echo_server(config: Arc<rustls::ServerConfig>, n: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut data = vec![0u8; n];
            if tls.read_exact(&mut data).is_err() {
                return;
            }
            tls.write_all(&data).unwrap();
            tls.flush().unwrap();
            let _ = tls.read_to_end(&mut Vec::new());
        });
        addr
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("127.0.0.1").unwrap()
    }

    #[test]
    fn amqps_stream_carries_a_megabyte_both_ways_under_an_edge_triggered_poll() {
        let n = 1 << 20;
        let (server, roots) = server_and_roots();
        let addr = echo_server(server, n);
        let tls = with_roots(roots).unwrap();
        let mut stream =
            AmqpsStream::connect(addr, localhost(), tls, Duration::from_secs(5)).unwrap();
        let poll = mio::Poll::new().unwrap();
        let ready = mio::Ready::readable() | mio::Ready::writable();
        poll.register(&stream, mio::Token(0), ready, mio::PollOpt::edge())
            .unwrap();
        let payload: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::with_capacity(n));
        let mut buf = vec![0u8; 20_000];
        let mut events = mio::Events::with_capacity(8);
        let t0 = Instant::now();
        // As amiquip's loop does: on an event, write until done or WouldBlock, read until
        // WouldBlock. A read that stopped early would never be woken again.
        while got.len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "stalled at {}",
                got.len()
            );
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            for event in events.iter() {
                if event.readiness().is_writable() {
                    while sent < n {
                        match stream.write(&payload[sent..]) {
                            Ok(k) => sent += k,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("write: {e}"),
                        }
                    }
                }
                if event.readiness().is_readable() {
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => panic!("closed after {} bytes", got.len()),
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                }
            }
        }
        assert_eq!(sent, n);
        assert!(got == payload, "the echo differs");
    }

    #[test]
    fn amqps_stream_refuses_a_certificate_it_does_not_trust() {
        let (server, _) = server_and_roots();
        let (_, other_roots) = server_and_roots();
        let addr = echo_server(server, 1);
        let tls = with_roots(other_roots).unwrap();
        let err = AmqpsStream::connect(addr, localhost(), tls, Duration::from_secs(5))
            .err()
            .expect("an untrusted certificate is refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("TLS handshake") && msg.contains("certificate"),
            "{msg}"
        );
    }
}
