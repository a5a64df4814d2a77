//! The service end to end: the real binary against a real RabbitMQ broker (127.0.0.1:5672,
//! guest/guest) and a real FTP server (libunftp, in this process, on loopback), with real
//! folders and file events. Each test has its own temp dirs, vhost, queue and FTP server; the
//! TLS test makes its certificate with rcgen and puts a rustls front before the broker.
//!
//! Needs RabbitMQ and nothing else: a broker listening on 127.0.0.1:5672 is used as it is;
//! without one, an installed `rabbitmq-server` is started once. `.ci/service-setup.sh` installs
//! and starts it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use terawang::simulate::{SimFile, SimParams, Truth, simulate_many};

const FTP_USER: &str = "tw";
const FTP_PASS: &str = "secret-ftp-pw";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const BROKER: &str = "127.0.0.1:5672";
const GET_RABBITMQ: &str =
    "install it with `apt-get install rabbitmq-server`, or run `.ci/service-setup.sh`";

/// Where `tool` is installed: on `PATH`, or in the sbin folders where Debian puts RabbitMQ's
/// tools and which a user's `PATH` may lack.
fn installed(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn broker_listening() -> bool {
    let addr = BROKER.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// A broker on 127.0.0.1:5672 and `rabbitmqctl` for its vhosts: the one running, or an
/// installed `rabbitmq-server` started once for all tests. Panics at once, saying what is
/// missing, when neither can be had.
fn rabbitmqctl_path() -> &'static Path {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match READY.get_or_init(provide_broker) {
        Ok(ctl) => ctl,
        Err(why) => panic!("{why}"),
    }
}

fn provide_broker() -> Result<PathBuf, String> {
    let ctl = installed("rabbitmqctl").ok_or_else(|| {
        format!("the service tests need RabbitMQ's `rabbitmqctl`, not installed: {GET_RABBITMQ}")
    })?;
    if broker_listening() {
        return Ok(ctl);
    }
    let server = installed("rabbitmq-server").ok_or_else(|| {
        format!(
            "no RabbitMQ broker on {BROKER} and `rabbitmq-server` is not installed: {GET_RABBITMQ}"
        )
    })?;
    let started = Command::new(&server)
        .arg("-detached")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", server.display()))?;
    if !started.success() {
        return Err(format!(
            "`{} -detached` failed ({started}): start RabbitMQ by hand or run `.ci/service-setup.sh`",
            server.display()
        ));
    }
    let awaited = Command::new(&ctl)
        .args(["-q", "--timeout", "120", "await_startup"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ctl.display()))?;
    if !awaited.status.success() || !broker_listening() {
        return Err(format!(
            "RabbitMQ was started but does not answer on {BROKER}: {}",
            String::from_utf8_lossy(&awaited.stderr)
        ));
    }
    Ok(ctl)
}

/// A vhost of its own on the local broker, deleted on drop.
struct Vhost {
    name: String,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new(rabbitmqctl_path())
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vhost {
    fn new(test: &str) -> Vhost {
        let name = format!("/terawang-test-{test}-{}", std::process::id());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    fn url(&self) -> String {
        let enc: String = self
            .name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("amqp://guest:guest@127.0.0.1:5672/{enc}")
    }

    /// Takes every message from a queue declared elsewhere (the job queues): (body, the
    /// `x-reason` header).
    fn drain_declared(&self, queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
        let mut conn = amiquip::Connection::insecure_open(&self.url()).unwrap();
        let ch = conn.open_channel(None).unwrap();
        let q = ch.queue_declare_passive(queue).unwrap();
        let mut out = Vec::new();
        while let Some(get) = q.get(true).unwrap() {
            let reason = get
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.get("x-reason"))
                .map(|v| match v {
                    amiquip::AmqpValue::LongString(s) => s.clone(),
                    other => format!("{other:?}"),
                });
            out.push((get.delivery.body.clone(), reason));
        }
        let _ = conn.close();
        out
    }

    /// Takes every message from `queue`: (body, delivery mode).
    fn drain(&self, queue: &str) -> Vec<(String, Option<u8>)> {
        let mut conn = amiquip::Connection::insecure_open(&self.url()).unwrap();
        let ch = conn.open_channel(None).unwrap();
        let q = ch
            .queue_declare(queue, amiquip::QueueDeclareOptions::default())
            .unwrap();
        let mut out = Vec::new();
        while let Some(get) = q.get(true).unwrap() {
            out.push((
                String::from_utf8(get.delivery.body.clone()).unwrap(),
                *get.delivery.properties.delivery_mode(),
            ));
        }
        let _ = conn.close();
        out
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new(rabbitmqctl_path())
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// A libunftp server serving a temp root on loopback (one user, passive mode), on a tokio
/// runtime of its own thread; stopped on drop, its connections closed.
struct FtpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The one account of the test FTP servers.
#[derive(Debug)]
struct FtpAccount;

#[async_trait::async_trait]
impl unftp_core::auth::Authenticator for FtpAccount {
    async fn authenticate(
        &self,
        username: &str,
        creds: &unftp_core::auth::Credentials,
    ) -> Result<unftp_core::auth::Principal, unftp_core::auth::AuthenticationError> {
        if username != FTP_USER {
            return Err(unftp_core::auth::AuthenticationError::BadUser);
        }
        if creds.password.as_deref() != Some(FTP_PASS) {
            return Err(unftp_core::auth::AuthenticationError::BadPassword);
        }
        Ok(unftp_core::auth::Principal {
            username: username.to_string(),
        })
    }
}

/// Data ports of the test FTP servers: above the kernel's ephemeral range, so that they do
/// not meet the ports `free_port` hands out.
const FTP_PASSIVE_PORTS: std::ops::RangeInclusive<u16> = 61000..=65000;

impl FtpServer {
    fn start(port: u16, root: &Path) -> FtpServer {
        FtpServer::serve(port, root, None)
    }

    /// An explicit-FTPS server (TLS required on control and data connections) with the given
    /// certificate and key.
    fn start_tls(port: u16, root: &Path, cert: &Path, key: &Path) -> FtpServer {
        FtpServer::serve(port, root, Some((cert, key)))
    }

    /// Starts the server and waits until it listens on `port`.
    fn serve(port: u16, root: &Path, tls: Option<(&Path, &Path)>) -> FtpServer {
        std::fs::create_dir_all(root).unwrap();
        let home = root.to_path_buf();
        let mut builder = libunftp::ServerBuilder::with_authenticator(
            Box::new(move || unftp_sbe_fs::Filesystem::new(home.clone()).unwrap()),
            Arc::new(FtpAccount),
        )
        .greeting("terawang test FTP server")
        .passive_ports(FTP_PASSIVE_PORTS);
        if let Some((cert, key)) = tls {
            builder = builder.ftps(cert, key).ftps_required(true, true);
        }
        let server = builder.build().expect("FTP server settings");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ftp-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let result = rt.block_on(async move {
                    tokio::select! {
                        r = server.listen(format!("127.0.0.1:{port}")) => r,
                        _ = stopped => Ok(()),
                    }
                });
                // Ends the sessions and closes their sockets.
                rt.shutdown_timeout(Duration::from_secs(1));
                if let Err(e) = result {
                    panic!("the FTP server on port {port} failed: {e:?}");
                }
            })
            .unwrap();
        wait_until("the FTP server", Duration::from_secs(15), || {
            thread.is_finished() || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut ftp = FtpServer {
            stop: Some(stop),
            thread: Some(thread),
        };
        if ftp.thread.as_ref().is_some_and(|t| t.is_finished()) {
            ftp.stop_and_join();
            panic!("the FTP server on port {port} stopped at once");
        }
        ftp
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A self-signed certificate for 127.0.0.1 (an IP subject alternative name) and its key, as
/// PEM files in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A TLS front for the broker, as an AMQPS listener would be: each connection's TLS (rustls,
/// with the given certificate) ends here and its bytes go on to 127.0.0.1:`target`. Stopped
/// on drop, its connections closed.
struct TlsFront {
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    fn start(port: u16, target: u16, cert: &Path, key: &Path) -> TlsFront {
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (flag, open) = (stop.clone(), sockets.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(broker) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut open = open.lock().unwrap();
                        open.push(client.try_clone().unwrap());
                        open.push(broker.try_clone().unwrap());
                        let tls = rustls::ServerConnection::new(config.clone()).unwrap();
                        TlsFront::relay(tls, client, broker);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        TlsFront {
            stop,
            sockets,
            thread: Some(thread),
        }
    }

    /// Two threads per connection: client records to broker bytes, broker bytes to client
    /// records, sharing the TLS session. Either side closing closes both.
    fn relay(tls: rustls::ServerConnection, client: TcpStream, broker: TcpStream) {
        let tls = Arc::new(Mutex::new(tls));
        let close = |a: &TcpStream, b: &TcpStream| {
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        };
        let (tls_in, mut client_in, mut broker_out) = (
            tls.clone(),
            client.try_clone().unwrap(),
            broker.try_clone().unwrap(),
        );
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut plain = Vec::new();
            let mut client_out = client_in.try_clone().unwrap();
            while let Ok(n @ 1..) = client_in.read(&mut buf) {
                let ok = {
                    let mut tls = tls_in.lock().unwrap();
                    let mut records = &buf[..n];
                    let mut ok = true;
                    while ok && !records.is_empty() {
                        ok =
                            tls.read_tls(&mut records).is_ok() && tls.process_new_packets().is_ok();
                    }
                    plain.clear();
                    let _ = tls.reader().read_to_end(&mut plain);
                    // Handshake replies (and alerts) go back to the client.
                    while tls.wants_write() && tls.write_tls(&mut client_out).is_ok() {}
                    ok
                };
                if !ok || broker_out.write_all(&plain).is_err() {
                    break;
                }
            }
            close(&client_in, &broker_out);
        });
        let (mut broker_in, mut client_out) = (broker, client);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = broker_in.read(&mut buf) {
                let mut tls = tls.lock().unwrap();
                if tls.writer().write_all(&buf[..n]).is_err() {
                    break;
                }
                let mut ok = true;
                while ok && tls.wants_write() {
                    ok = tls.write_tls(&mut client_out).is_ok();
                }
                if !ok {
                    break;
                }
            }
            close(&broker_in, &client_out);
        });
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A TCP forwarder to the broker that can be switched on later ("the broker is back").
struct Proxy {
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(port: u16, target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        for (mut a, mut b) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut a, &mut b);
                                let _ = b.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy { stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One test's folders and settings.
struct Site {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    result: PathBuf,
    temp: PathBuf,
    ftp_root: PathBuf,
    ftp_port: u16,
    amqp_port: u16,
    queue: String,
    vhost: Vhost,
    settle_s: f64,
    /// `TOMOGRAM_UPLOAD`.
    upload_png: bool,
    /// FTPS and AMQPS, trusting this certificate (`SSL_CERT_FILE`).
    tls_cert: Option<PathBuf>,
    /// RabbitMQ user and password.
    amqp_login: (String, String),
    /// `RUST_LOG`.
    rust_log: &'static str,
    /// More settings, set last.
    extra_env: Vec<(String, String)>,
}

impl Site {
    fn new(test: &str) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Site {
            data: root.join("data_mentah"),
            result: root.join("hasil_proses_lokal"),
            temp: root.join("temp_data"),
            ftp_root: root.join("ftp"),
            ftp_port: free_port(),
            amqp_port: 5672,
            queue: format!("results-{test}"),
            vhost: Vhost::new(test),
            settle_s: 0.5,
            upload_png: false,
            tls_cert: None,
            amqp_login: ("guest".into(), "guest".into()),
            rust_log: "info",
            extra_env: Vec::new(),
            root,
            _tmp: tmp,
        }
    }

    fn ftp(&self) -> FtpServer {
        FtpServer::start(self.ftp_port, &self.ftp_root)
    }

    fn start(&self, once: bool) -> Service {
        let mut cmd = self.command(once);
        Service {
            child: cmd.spawn().unwrap(),
        }
    }

    /// Starts `run --role <role>` as its own machine would: its own `TEMP_DIR` and
    /// `RESULT_DIR` under `<name>/`.
    fn start_role(&self, role: &str, name: &str) -> Service {
        let own = self.root.join(name);
        let mut cmd = self.command(false);
        cmd.args(["--role", role, "--threads", "1"])
            .env("TEMP_DIR", own.join("temp"))
            .env("RESULT_DIR", own.join("result"));
        Service {
            child: cmd.spawn().unwrap(),
        }
    }

    /// The job queue of the site's vhost.
    fn job_queue(&self) -> String {
        format!("jobs-{}", self.queue)
    }

    fn command(&self, once: bool) -> Command {
        std::fs::create_dir_all(&self.data).unwrap();
        let env_file = self.root.join("test.env");
        // The .env sets what the real environment does not: checks that the file is read.
        // Written whole and renamed in: processes started side by side never read it half-way.
        let part = self.root.join(format!(".test.env.{}", free_port()));
        std::fs::write(&part, format!("FTP_PASSWORD={FTP_PASS}\n")).unwrap();
        std::fs::rename(&part, &env_file).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("service.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_terawang"));
        cmd.arg("run").arg("--env-file").arg(&env_file);
        if once {
            cmd.arg("--once");
        }
        if let Some(cert) = &self.tls_cert {
            cmd.env("SSL_CERT_FILE", cert);
        }
        cmd.current_dir(&self.root)
            .env_remove("FTP_PASSWORD")
            .env("RUST_LOG", self.rust_log)
            .env("DATA_DIR", &self.data)
            .env("RESULT_DIR", &self.result)
            .env("TEMP_DIR", &self.temp)
            .env("FTP_HOST", "127.0.0.1")
            .env("FTP_PORT", self.ftp_port.to_string())
            .env("FTP_USER", FTP_USER)
            .env("FTP_FOLDER_HASIL", "/result")
            .env("RABBITMQ_HOST", "127.0.0.1")
            .env("RABBITMQ_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_USERNAME", &self.amqp_login.0)
            .env("RABBITMQ_PASSWORD", &self.amqp_login.1)
            .env("RABBITMQ_VHOST", &self.vhost.name)
            .env("RABBITMQ_QUEUE", &self.queue)
            .env("RABBITMQ_QUEUE_DURABLE", "false")
            .env("FILE_SETTLE_SECONDS", self.settle_s.to_string())
            .env("TOMOGRAM_UPLOAD", self.upload_png.to_string())
            .env("FTP_TLS", self.tls_cert.is_some().to_string())
            .env("RABBITMQ_TLS", self.tls_cert.is_some().to_string())
            .env("RETRY_MAX_SECONDS", "1")
            .env("RESCAN_SECONDS", "2")
            .env("RABBITMQ_JOB_QUEUE", self.job_queue())
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("service.log")).unwrap_or_default()
    }

    /// Writes a file the way a device upload does: a hidden name, then a rename.
    fn drop_file(&self, f: &SimFile) {
        let tmp = self.data.join(format!(".{}.part", f.file_name));
        std::fs::write(&tmp, &f.json).unwrap();
        std::fs::rename(&tmp, self.data.join(&f.file_name)).unwrap();
    }

    /// Simulates `n` sets and drops all their files into the data folder (renamed in).
    fn drop_sets(&self, n: usize, seed: u64) -> (Vec<SimFile>, Truth) {
        let (files, truth) = sets(n, seed);
        std::fs::create_dir_all(&self.data).unwrap();
        for f in &files {
            self.drop_file(f);
        }
        (files, truth)
    }

    /// Writes a file in place.
    fn write_file(&self, f: &SimFile) {
        std::fs::write(self.data.join(&f.file_name), &f.json).unwrap();
    }

    /// The names published on the site's queue so far (drained), sorted.
    fn published_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .vhost
            .drain(&self.queue)
            .into_iter()
            .map(|m| m.0)
            .collect();
        names.sort();
        names
    }

    fn json_files_in_data(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.data)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    fn ftp_file(&self, name: &str) -> PathBuf {
        self.ftp_root.join("result").join(name)
    }

    fn assert_log_clean(&self) {
        let log = self.log();
        assert!(!log.contains(FTP_PASS), "the log shows the FTP password");
    }
}

/// A `terawang run` child that never outlives its test: killed and waited for on drop, also
/// when the test panics. Derefs to the `Child` for the tests' own waits and signals.
struct Service {
    child: Child,
}

impl Deref for Service {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for Service {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Nothing to do for a child already waited for: std does not signal a reaped pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: Service, site: &Site) {
    signal(child, site, "-TERM");
}

/// Sends `sig` (as `kill` spells it) and expects exit code 0 within 10 s.
fn signal(mut child: Service, site: &Site, sig: &str) {
    let pid = child.id().to_string();
    let t0 = Instant::now();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit {status}; log:\n{}", site.log());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM; log:\n{}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sets(n: usize, seed: u64) -> (Vec<SimFile>, Truth) {
    simulate_many(&SimParams::default(), n, seed, false)
}

#[test]
fn happy_path_saves_uploads_publishes_once_and_deletes_sources() {
    let mut site = Site::new("happy");
    site.upload_png = true;
    let _ftp = site.ftp();
    let (files, truth) = sets(1, 11);
    let name = truth.sets[0].result_file.clone();
    std::fs::create_dir_all(&site.data).unwrap();
    // Half before start (found by the startup scan), half after (file events), both ways.
    for f in &files[..4] {
        site.write_file(f);
    }
    std::fs::write(site.data.join("notes.txt"), "not a tap").unwrap();
    let child = site.start(false);
    for (i, f) in files[4..].iter().enumerate() {
        if i % 2 == 0 {
            site.drop_file(f);
        } else {
            site.write_file(f);
        }
    }
    wait_until("the sources to go", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    let local = std::fs::read(site.result.join(&name)).unwrap();
    let remote = std::fs::read(site.ftp_file(&name)).unwrap();
    assert_eq!(local, remote, "FTP bytes differ from the local result");
    // The report and the picture are saved beside it; the picture is uploaded too.
    let png_name = name.replace(".json", ".png");
    assert!(
        site.result
            .join(name.replace(".json", ".report.json"))
            .exists()
    );
    let local_png = std::fs::read(site.result.join(&png_name)).unwrap();
    assert!(local_png.starts_with(b"\x89PNG"));
    assert_eq!(local_png, std::fs::read(site.ftp_file(&png_name)).unwrap());
    let parsed: Vec<Vec<f64>> = serde_json::from_slice(&local).unwrap();
    assert_eq!(parsed.len(), 8);
    let msgs = site.vhost.drain(&site.queue);
    assert_eq!(msgs, vec![(name.clone(), Some(2))]);
    assert!(site.data.join("notes.txt").exists());
    terminate(child, &site);
    assert!(site.vhost.drain(&site.queue).is_empty());
    let log = site.log();
    assert!(log.contains(&format!("set {name}")), "{log}");
    site.assert_log_clean();
}

#[test]
fn ftps_and_amqps_deliver_over_tls() {
    let mut site = Site::new("tls");
    let (cert, key) = self_signed(&site.root);
    let _ftp = FtpServer::start_tls(site.ftp_port, &site.ftp_root, &cert, &key);
    let tls_port = free_port();
    let _front = TlsFront::start(tls_port, 5672, &cert, &key);
    site.amqp_port = tls_port;
    site.tls_cert = Some(cert);
    let (_, truth) = site.drop_sets(1, 19);
    let name = truth.sets[0].result_file.clone();
    let child = site.start(false);
    wait_until("the sources to go", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    // The FTPS server refuses plain connections, and only TLS reaches the broker's front.
    let local = std::fs::read(site.result.join(&name)).unwrap();
    assert_eq!(local, std::fs::read(site.ftp_file(&name)).unwrap());
    assert_eq!(site.vhost.drain(&site.queue), vec![(name, Some(2))]);
    terminate(child, &site);
    site.assert_log_clean();
}

#[test]
fn corrupt_file_is_set_aside_with_reason_and_never_deleted() {
    let site = Site::new("corrupt");
    let _ftp = site.ftp();
    let (files, truth) = sets(1, 12);
    let name = truth.sets[0].result_file.clone();
    std::fs::create_dir_all(&site.data).unwrap();
    let bad = &files[2];
    std::fs::write(
        site.data.join(&bad.file_name),
        &bad.json[..bad.json.len() / 2],
    )
    .unwrap();
    for f in files.iter().filter(|f| f.file_name != bad.file_name) {
        site.drop_file(f);
    }
    let child = site.start(false);
    let rejected = site.data.join("rejected").join(&bad.file_name);
    wait_until(
        "the corrupt file to be set aside",
        Duration::from_secs(30),
        || rejected.exists(),
    );
    let reason = std::fs::read_to_string(
        site.data
            .join("rejected")
            .join(format!("{}.reason.txt", bad.file_name)),
    )
    .unwrap();
    assert!(reason.contains("JSON"), "{reason}");
    assert_eq!(site.json_files_in_data().len(), 7, "the good taps stay");
    assert!(site.vhost.drain(&site.queue).is_empty());
    // A good copy of the tap completes the set.
    site.drop_file(bad);
    wait_until("the set to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    assert!(rejected.exists(), "a rejected file is never deleted");
    assert_eq!(site.vhost.drain(&site.queue), vec![(name, Some(2))]);
    signal(child, &site, "-INT");
}

#[test]
fn slowly_written_file_is_not_rejected_and_is_processed_once_complete() {
    let mut site = Site::new("slow");
    site.settle_s = 1.0;
    let _ftp = site.ftp();
    let (files, truth) = sets(1, 13);
    let name = truth.sets[0].result_file.clone();
    let child = site.start(false);
    for f in &files[..7] {
        site.drop_file(f);
    }
    let slow = &files[7];
    let path = site.data.join(&slow.file_name);
    let bytes = slow.json.as_bytes();
    let mut out = std::fs::File::create(&path).unwrap();
    let chunks = 6;
    for k in 0..chunks {
        let a = bytes.len() * k / chunks;
        let b = bytes.len() * (k + 1) / chunks;
        out.write_all(&bytes[a..b]).unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(out);
    wait_until("the set to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    assert!(!site.data.join("rejected").exists(), "{}", site.log());
    assert_eq!(site.vhost.drain(&site.queue), vec![(name, Some(2))]);
    terminate(child, &site);
}

#[test]
fn ftp_down_then_up_catches_up() {
    let site = Site::new("ftpdown");
    let (_, truth) = site.drop_sets(2, 14);
    let names: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    // --once with the FTP server down: saved locally, kept in the journal, exit code 4.
    let status = site.start(true).wait().unwrap();
    assert_eq!(status.code(), Some(4), "{}", site.log());
    assert!(names.iter().all(|n| site.result.join(n).exists()));
    // The service resumes them and waits for the server.
    let child = site.start(false);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        site.json_files_in_data().len(),
        16,
        "sources kept while FTP is down"
    );
    assert!(
        site.vhost.drain(&site.queue).is_empty(),
        "published before upload"
    );
    let _ftp = site.ftp();
    wait_until("the catch-up", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    for n in &names {
        assert_eq!(
            std::fs::read(site.result.join(n)).unwrap(),
            std::fs::read(site.ftp_file(n)).unwrap()
        );
    }
    let got = site.published_names();
    let mut want = names.clone();
    want.sort();
    assert_eq!(got, want);
    terminate(child, &site);
}

#[test]
fn broker_unreachable_then_back() {
    let mut site = Site::new("brokerdown");
    site.amqp_port = free_port();
    let _ftp = site.ftp();
    let (files, truth) = sets(1, 15);
    let name = truth.sets[0].result_file.clone();
    let child = site.start(false);
    for f in &files {
        site.drop_file(f);
    }
    wait_until("the upload", Duration::from_secs(30), || {
        site.ftp_file(&name).exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        site.json_files_in_data().len(),
        8,
        "sources kept while the broker is away"
    );
    let _proxy = Proxy::start(site.amqp_port, 5672);
    wait_until("the publish", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    assert_eq!(site.vhost.drain(&site.queue), vec![(name, Some(2))]);
    terminate(child, &site);
}

#[test]
fn resume_after_kill_between_upload_and_publish_loses_nothing() {
    let site = Site::new("resume");
    let _ftp = site.ftp();
    let (files, truth) = sets(2, 16);
    std::fs::create_dir_all(&site.data).unwrap();
    std::fs::create_dir_all(&site.result).unwrap();
    std::fs::create_dir_all(&site.temp).unwrap();
    // As a killed run left it: set 0 uploaded but not published, set 1 published but its
    // sources not deleted.
    let mut journal = String::new();
    for (s, stage) in truth.sets.iter().zip(["uploaded", "published"]) {
        for f in &s.files {
            let sim = files.iter().find(|x| &x.file_name == f).unwrap();
            site.write_file(sim);
        }
        std::fs::write(site.result.join(&s.result_file), b"[[0]]\n").unwrap();
        journal.push_str(&format!(
            "computed {} {}\n",
            s.result_file,
            s.files.join(" ")
        ));
        journal.push_str(&format!("saved {}\n", s.result_file));
        journal.push_str(&format!("{stage} {}\n", s.result_file));
    }
    journal.push_str("publ"); // torn last line
    std::fs::write(site.temp.join("journal.log"), journal).unwrap();
    let child = site.start(false);
    wait_until("both sets to finish", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    // Set 0 is published (once), set 1 is not published again; neither is recomputed or
    // uploaded again.
    assert_eq!(
        site.vhost.drain(&site.queue),
        vec![(truth.sets[0].result_file.clone(), Some(2))]
    );
    for s in &truth.sets {
        assert!(!site.ftp_file(&s.result_file).exists());
        assert_eq!(
            std::fs::read(site.result.join(&s.result_file)).unwrap(),
            b"[[0]]\n"
        );
    }
    terminate(child, &site);
}

#[test]
fn hundred_sets_at_once_are_all_processed() {
    let site = Site::new("hundred");
    let _ftp = site.ftp();
    let (_, truth) = site.drop_sets(100, 17);
    let mut child = site.start(true);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", site.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}; log:\n{}", site.log());
    assert!(site.json_files_in_data().is_empty());
    let got = site.published_names();
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(got, want);
    for n in &want {
        assert!(site.ftp_file(n).exists());
    }
}

/// `run --backend gpu` on a software adapter (llvmpipe in CI): one GPU context, the sets of a
/// backlog estimated in batches, every set delivered and its velocities those of the truth.
#[test]
fn gpu_backend_batches_a_backlog_and_delivers_every_set() {
    let mut site = Site::new("gpu-batch");
    site.rust_log = "info,terawang::service=debug";
    site.extra_env
        .push(("TERAWANG_GPU_ALLOW_SOFTWARE".into(), "1".into()));
    let _ftp = site.ftp();
    let (files, truth) = sets(12, 23);
    // The CPU's results of the same files, from `process`.
    let cpu_in = site.root.join("cpu-in");
    let cpu_out = site.root.join("cpu-out");
    std::fs::create_dir_all(&cpu_in).unwrap();
    std::fs::create_dir_all(&site.data).unwrap();
    for f in &files {
        std::fs::write(cpu_in.join(&f.file_name), &f.json).unwrap();
        site.drop_file(f);
    }
    let cpu = Command::new(env!("CARGO_BIN_EXE_terawang"))
        .args(["process", "--backend", "cpu", "--out"])
        .args([&cpu_out, &cpu_in])
        .output()
        .unwrap();
    assert!(cpu.status.success(), "{cpu:?}");
    let mut cmd = site.command(true);
    cmd.args(["--backend", "gpu", "--threads", "2"]);
    let status = cmd.status().unwrap();
    let log = site.log();
    if !status.success() && log.contains("no usable GPU adapter") {
        eprintln!(
            "skipped: no GPU adapter, not even a software one (.ci/gpu-setup.sh installs one)"
        );
        return;
    }
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(log.contains("GPU: one gpu context"), "{log}");
    let batches: Vec<usize> = log
        .lines()
        .filter_map(|l| l.split("GPU: ").nth(1)?.split(" sets in one batch").next())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(batches.iter().sum::<usize>(), 12, "{log}");
    assert!(
        batches.iter().any(|&n| n > 1),
        "a backlog goes to the GPU in batches, got {batches:?}"
    );
    assert!(site.json_files_in_data().is_empty());
    let got = site.published_names();
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(got, want);
    // The GPU's velocities are the CPU's, but for the odd ray where float rounding moves a
    // correlation peak.
    let velocities = |path: &Path| -> Vec<f64> {
        // The plain result: the bare 8×8 matrix.
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (mut rays, mut equal) = (0, 0);
    for name in &want {
        let gpu = velocities(&site.result.join(name));
        let cpu = velocities(&cpu_out.join(name));
        rays += gpu.len();
        equal += gpu
            .iter()
            .zip(&cpu)
            .filter(|(g, c)| (*g - *c).abs() <= 0.005 * c.abs().max(1.0))
            .count();
    }
    assert!(
        equal * 100 >= rays * 98,
        "{equal} of {rays} rays agree with the CPU within 0.5 %"
    );
}

/// A backlog copied in by name, as a mirror does, arrives in no order of time: a device's
/// later set can be complete before the files of its earlier ones arrive. Each set must
/// still form, none of its files set aside as a leftover.
#[test]
fn a_backlog_arriving_newest_first_forms_every_set() {
    let mut site = Site::new("newest-first");
    site.settle_s = 0.0;
    let _ftp = site.ftp();
    let (mut files, truth) = sets(12, 29);
    std::fs::create_dir_all(&site.data).unwrap();
    let child = site.start(false);
    wait_until("the service to watch", Duration::from_secs(20), || {
        site.log().contains("watching")
    });
    let unix_s = |f: &SimFile| {
        f.file_name
            .rsplit('_')
            .nth(1)
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    files.sort_by_key(|f| std::cmp::Reverse(unix_s(f)));
    for f in &files {
        site.drop_file(f);
        std::thread::sleep(Duration::from_millis(3));
    }
    wait_until("the sources to go", Duration::from_secs(60), || {
        site.json_files_in_data().is_empty()
    });
    let rejected = site.data.join("rejected");
    let set_aside = std::fs::read_dir(&rejected).map_or(0, |d| d.count());
    assert_eq!(set_aside, 0, "files set aside:\n{}", site.log());
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(site.published_names(), want);
    terminate(child, &site);
}

#[test]
fn kill_9_midway_then_restart_delivers_everything() {
    let site = Site::new("kill9");
    let _ftp = site.ftp();
    let (files, truth) = site.drop_sets(60, 18);
    let mut child = site.start(false);
    let t0 = Instant::now();
    while site.json_files_in_data().len() == files.len() {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", site.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = site.json_files_in_data().len();
    assert!(left > 0, "the kill came too late to test anything");
    let child = site.start(false);
    wait_until("everything", Duration::from_secs(60), || {
        site.json_files_in_data().is_empty()
    });
    terminate(child, &site);
    let mut got = site.published_names();
    got.dedup(); // at-least-once: a set in flight at the kill may come twice
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(got, want);
    let mut buf = String::new();
    std::fs::File::open(site.temp.join("journal.log"))
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    let left = terawang::journal::JournalState::replay(&buf);
    assert!(left.sets.is_empty(), "{left:?}");
}

#[test]
fn sigterm_while_the_ftp_server_hangs_exits_in_time() {
    let mut site = Site::new("hang");
    // Accepts connections (the kernel's backlog) but never says hello.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    site.ftp_port = hole.local_addr().unwrap().port();
    let (files, truth) = sets(1, 19);
    let name = truth.sets[0].result_file.clone();
    let child = site.start(false);
    for f in &files {
        site.drop_file(f);
    }
    wait_until("the local result", Duration::from_secs(30), || {
        site.result.join(&name).exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    terminate(child, &site);
    assert_eq!(site.json_files_in_data().len(), 8, "sources kept");
    assert!(site.vhost.drain(&site.queue).is_empty());
    drop(hole);
}

/// A RabbitMQ user of its own with the given permissions on a vhost, deleted on drop.
struct AmqpUser {
    name: String,
}

impl AmqpUser {
    fn new(test: &str, password: &str, vhost: &Vhost, configure: &str) -> AmqpUser {
        let name = format!("terawang-test-{test}-{}", std::process::id());
        rabbitmqctl(&["add_user", &name, password]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            &name,
            configure,
            ".*",
            ".*",
        ]);
        AmqpUser { name }
    }
}

impl Drop for AmqpUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// `GET path` on the metrics listener: (status code, body); `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The value of an unlabelled metric in a `/metrics` body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `f` renamed to another device and unix time (its tap and upload id kept).
fn retimed(f: &SimFile, device: &str, unix_s: i64, upload: &str) -> SimFile {
    let stem = f.file_name.trim_end_matches(".json");
    let tap = stem.rsplit('_').next().unwrap();
    SimFile {
        file_name: format!("{device}_{upload}_{unix_s}_{tap}.json"),
        json: f.json.clone(),
    }
}

#[test]
fn files_that_never_form_a_set_are_read_rejected_or_reported_within_seconds() {
    let mut site = Site::new("lone");
    // The window is one second, so a file still alone after 1 + 1 s is incomplete.
    site.extra_env = vec![
        ("GROUP_WINDOW_SECONDS".into(), "1".into()),
        ("INCOMPLETE_GRACE_SECONDS".into(), "1".into()),
    ];
    let metrics_port = free_port();
    site.extra_env
        .push(("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}")));
    let _ftp = site.ftp();
    std::fs::create_dir_all(&site.data).unwrap();
    std::fs::create_dir_all(site.root.join("outside")).unwrap();
    let (files, _) = sets(2, 21);
    // A lone corrupt file: half of a tap.
    let lone = retimed(&files[0], "LONE-1", 1_800_000_000, "u1");
    std::fs::write(
        site.data.join(&lone.file_name),
        &lone.json[..lone.json.len() / 2],
    )
    .unwrap();
    // Seven taps of a set that never completes.
    let seven: Vec<SimFile> = files[8..15].to_vec();
    for f in &seven {
        site.drop_file(f);
    }
    // A FIFO, a folder and a link named like taps (the link points out of the folder).
    let fifo = "FIFO-1_u_1800000000_1.json";
    assert!(
        Command::new("mkfifo")
            .arg(site.data.join(fifo))
            .status()
            .unwrap()
            .success()
    );
    let folder = "DIR-1_u_1800000000_2.json";
    std::fs::create_dir(site.data.join(folder)).unwrap();
    let link = "LINK-1_u_1800000000_3.json";
    let target = site.root.join("outside").join("secret.json");
    std::fs::write(&target, &files[3].json).unwrap();
    std::os::unix::fs::symlink(&target, site.data.join(link)).unwrap();
    let child = site.start(false);
    let rejected = site.data.join("rejected");
    let reason = |name: &str| {
        std::fs::read_to_string(rejected.join(format!("{name}.reason.txt"))).unwrap_or_default()
    };
    wait_until(
        "the lone corrupt file and the odd entries to be set aside",
        Duration::from_secs(15),
        || {
            [lone.file_name.as_str(), fifo, folder, link]
                .iter()
                .all(|n| !reason(n).is_empty())
        },
    );
    assert!(
        reason(&lone.file_name).contains("truncated"),
        "{}",
        reason(&lone.file_name)
    );
    assert!(reason(fifo).contains("FIFO"), "{}", reason(fifo));
    assert!(reason(folder).contains("directory"), "{}", reason(folder));
    assert!(reason(link).contains("symbolic link"), "{}", reason(link));
    assert!(target.exists(), "the link's target is never touched");
    assert!(
        std::fs::symlink_metadata(rejected.join(link))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link itself is moved aside, not followed"
    );
    // The seven taps are logged once as incomplete, with the tap they miss.
    let missing_tap = (1..=8)
        .find(|k| {
            !seven
                .iter()
                .any(|f| f.file_name.ends_with(&format!("_{k}.json")))
        })
        .unwrap();
    wait_until(
        "the incomplete set to be logged",
        Duration::from_secs(15),
        || site.log().contains("incomplete: device"),
    );
    let log = site.log();
    let line = log
        .lines()
        .find(|l| l.contains("incomplete: device"))
        .unwrap();
    assert!(
        line.contains(&format!("missing tap {missing_tap}:")),
        "{line}"
    );
    assert!(line.contains(&seven[0].file_name), "{line}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        site.log().matches("incomplete: device").count(),
        1,
        "logged once"
    );
    let (_, body) = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(
        metric(&body, "terawang_files_incomplete"),
        Some(7.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "terawang_files_rejected_total"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(site.json_files_in_data().len(), 7, "the seven taps stay");
    terminate(child, &site);
}

#[test]
fn a_leftover_tap_is_set_aside_and_never_joins_a_later_set() {
    let site = Site::new("leftover");
    let _ftp = site.ftp();
    let (files, _) = sets(2, 22);
    let device = "20-79-18-81-6E-AB";
    let t0 = 1_800_000_000;
    let set_a: Vec<SimFile> = files[..8]
        .iter()
        .enumerate()
        .map(|(k, f)| retimed(f, device, t0 + 10 * k as i64, "a"))
        .collect();
    let retap = retimed(&files[2], device, t0 + 100, "retap");
    let set_b: Vec<SimFile> = files[8..]
        .iter()
        .enumerate()
        .map(|(k, f)| retimed(f, device, t0 + 500 + 10 * k as i64, "b"))
        .collect();
    std::fs::create_dir_all(&site.data).unwrap();
    let child = site.start(false);
    for f in &set_a {
        site.drop_file(f);
    }
    wait_until("set A", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    site.drop_file(&retap);
    std::thread::sleep(Duration::from_secs(1));
    for f in &set_b {
        site.drop_file(f);
    }
    let reason_file = site
        .data
        .join("rejected")
        .join(format!("{}.reason.txt", retap.file_name));
    wait_until(
        "set B and the leftover set aside",
        Duration::from_secs(30),
        || site.json_files_in_data().is_empty() && reason_file.exists(),
    );
    let reason = std::fs::read_to_string(&reason_file).unwrap();
    let name_b = format!("result_{device}_{}", t0 + 500);
    assert!(
        reason.contains("leftover") && reason.contains(&name_b),
        "{reason}"
    );
    assert_eq!(
        site.published_names(),
        vec![
            format!("result_{device}_{t0}.json"),
            format!("{name_b}.json")
        ]
    );
    // B's report names its own tap 3 as the source of row 3.
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(site.result.join(format!("{name_b}.report.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["sources"][2],
        set_b[2].file_name.as_str(),
        "{report}"
    );
    let log = site.log();
    assert!(
        log.contains(&format!(
            "rejected {}",
            site.data.join(&retap.file_name).display()
        )),
        "{log}"
    );
    terminate(child, &site);
}

#[test]
fn a_tap_unreadable_when_its_set_is_computed_waits_for_a_re_tap_with_the_rest() {
    // A rejected survey holds the set for a settle time after its taps settled; meanwhile tap
    // 3 is overwritten with something that is not a tap, so the worker finds it unreadable.
    // The set is withdrawn: its seven good taps wait (they are not leftovers), and the re-tap
    // of sensor 3 completes the set.
    let mut site = Site::new("retapworker");
    site.settle_s = 2.0;
    let _ftp = site.ftp();
    let (files, _) = sets(1, 41);
    let device = "20-79-18-81-6E-AC";
    let t0 = 1_800_000_000;
    let set_a: Vec<SimFile> = files
        .iter()
        .enumerate()
        .map(|(k, f)| retimed(f, device, t0 + 10 * k as i64, "a"))
        .collect();
    let retap = retimed(&files[2], device, t0 + 100, "retap");
    let survey = format!("{device}_{}_survey.json", t0 + 30);
    std::fs::create_dir_all(&site.data).unwrap();
    std::fs::write(site.data.join(&survey), r#"{"diameter_m": 5.0}"#).unwrap();
    for f in &set_a {
        site.drop_file(f);
    }
    let child = site.start(false);
    let rejected = site.data.join("rejected");
    let name = format!("result_{device}_{t0}");
    wait_until(
        "the set to wait for its survey",
        Duration::from_secs(20),
        || {
            site.log().contains(&format!(
                "{name}.json: complete; it waits for its survey file"
            ))
        },
    );
    std::fs::write(site.data.join(&set_a[2].file_name), r#"{"not": "a tap"}"#).unwrap();
    let reason_file = rejected.join(format!("{}.reason.txt", set_a[2].file_name));
    wait_until("tap 3 to be set aside", Duration::from_secs(20), || {
        reason_file.exists()
    });
    site.drop_file(&retap);
    wait_until("the set to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    terminate(child, &site);
    let log = site.log();
    assert!(
        log.contains(&format!(
            "{name}.json: {} could not be read when the set was computed; its other taps wait",
            site.data.join(&set_a[2].file_name).display()
        )),
        "{log}"
    );
    assert_eq!(site.published_names(), vec![format!("{name}.json")]);
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(site.result.join(format!("{name}.report.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(report["sources"][2], retap.file_name.as_str(), "{report}");
    // Nothing but the survey and tap 3 was set aside (with their reason files).
    let mut aside: Vec<String> = std::fs::read_dir(&rejected)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".reason.txt"))
        .collect();
    aside.sort();
    let mut expected = vec![survey.clone(), set_a[2].file_name.clone()];
    expected.sort();
    assert_eq!(aside, expected, "{log}");
}

#[test]
fn no_password_in_a_trace_level_log_and_temporary_files_are_cleaned() {
    let mut site = Site::new("secrets");
    let amqp_pass = "amqp-pw-7f3e91c2";
    let user = AmqpUser::new("secrets", amqp_pass, &site.vhost, ".*");
    site.amqp_login = (user.name.clone(), amqp_pass.into());
    site.rust_log = "trace";
    let _ftp = site.ftp();
    // What a killed run left: a result being written.
    std::fs::create_dir_all(&site.temp).unwrap();
    let stale_tmp = site.temp.join(".result_x_1.json.4242.tmp");
    std::fs::write(&stale_tmp, b"[[").unwrap();
    let (_, truth) = site.drop_sets(1, 23);
    let name = truth.sets[0].result_file.clone();
    let child = site.start(false);
    wait_until("the set to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    assert_eq!(site.published_names(), vec![name]);
    terminate(child, &site);
    assert!(!stale_tmp.exists(), "temporary files are removed at start");
    let log = site.log();
    assert!(log.contains("TRACE"), "a trace-level run: {log}");
    assert!(!log.contains(FTP_PASS), "the FTP password is in the log");
    assert!(
        !log.contains(amqp_pass),
        "the RabbitMQ password is in the log"
    );
}

#[test]
fn access_refused_is_reported_as_a_permission_not_a_durability_mismatch() {
    let mut site = Site::new("refused");
    let pass = "refused-pw-5512";
    // May write and read, but not declare (configure) queues.
    let user = AmqpUser::new("refused", pass, &site.vhost, "^$");
    site.amqp_login = (user.name.clone(), pass.into());
    let _ftp = site.ftp();
    site.drop_sets(1, 24);
    let child = site.start(false);
    wait_until("the refusal to be logged", Duration::from_secs(30), || {
        site.log().contains("access refused")
    });
    let log = site.log();
    assert!(!log.contains("must match"), "{log}");
    assert!(log.contains("permissions on vhost"), "{log}");
    terminate(child, &site);
}

#[test]
fn metrics_count_a_delivered_set_and_health_follows_the_broker() {
    let mut site = Site::new("metrics");
    site.amqp_port = free_port(); // nothing listens there yet
    let metrics_port = free_port();
    site.extra_env
        .push(("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}")));
    let _ftp = site.ftp();
    let child = site.start(false);
    // The idle delivery thread probes the sinks at start: the broker is unreachable.
    let mut health = (0, String::new());
    wait_until("/healthz to say 503", Duration::from_secs(20), || {
        health = http_get(metrics_port, "/healthz").unwrap_or_default();
        health.0 == 503
    });
    assert!(health.1.contains("amqp:"), "{}", health.1);
    let (_, truth) = site.drop_sets(1, 25);
    let name = truth.sets[0].result_file.clone();
    wait_until("the upload", Duration::from_secs(30), || {
        site.ftp_file(&name).exists()
    });
    let (_, body) = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(metric(&body, "terawang_sets_pending"), Some(1.0), "{body}");
    assert_eq!(
        metric(&body, "terawang_sets_delivered_total"),
        Some(0.0),
        "{body}"
    );
    let _proxy = Proxy::start(site.amqp_port, 5672);
    wait_until("the publish", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    wait_until("/healthz to say 200", Duration::from_secs(15), || {
        http_get(metrics_port, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    // The delivery's report reaches the coordinator just after the sources are gone.
    let mut body = String::new();
    wait_until(
        "the delivered set to be counted",
        Duration::from_secs(5),
        || {
            body = http_get(metrics_port, "/metrics").unwrap_or_default().1;
            metric(&body, "terawang_sets_delivered_total") == Some(1.0)
        },
    );
    assert_eq!(metric(&body, "terawang_sets_pending"), Some(0.0), "{body}");
    assert!(
        body.contains("terawang_sink_retries_total{sink=\"amqp\"}"),
        "{body}"
    );
    assert!(
        body.contains("terawang_stage_duration_seconds_count{stage=\"compute\"} 1"),
        "{body}"
    );
    assert_eq!(site.published_names(), vec![name]);
    terminate(child, &site);
}

#[test]
fn the_raw_archive_and_the_viewer_message_follow_each_set() {
    let mut site = Site::new("archive");
    let graph_queue = format!("graph-{}", site.queue);
    site.extra_env = vec![
        ("FTP_FOLDER_DATA_ROW".into(), "/data_row".into()),
        ("RABBITMQ_GRAPH_QUEUE".into(), graph_queue.clone()),
    ];
    let _ftp = site.ftp();
    let (files, truth) = site.drop_sets(2, 26);
    let child = site.start(false);
    wait_until("both sets to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    terminate(child, &site);
    // The raw files, byte for byte, in the archive.
    for f in &files {
        let archived = std::fs::read(site.ftp_root.join("data_row").join(&f.file_name))
            .unwrap_or_else(|e| panic!("{} not archived: {e}", f.file_name));
        assert_eq!(archived, f.json.as_bytes(), "{}", f.file_name);
    }
    // One result message and one viewer message per set.
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(site.published_names(), want);
    let mut graph: Vec<serde_json::Value> = site
        .vhost
        .drain(&graph_queue)
        .into_iter()
        .map(|(body, mode)| {
            assert_eq!(mode, Some(2), "persistent");
            serde_json::from_str(&body).unwrap()
        })
        .collect();
    graph.sort_by_key(|m| m["GUID_SURVEY"].as_str().unwrap().to_string());
    assert_eq!(graph.len(), 2);
    for (msg, set) in graph.iter().zip(&truth.sets) {
        assert_eq!(
            msg["GUID_SURVEY"].as_str().unwrap(),
            set.result_file.trim_end_matches(".json")
        );
        let data: Vec<&str> = msg["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            data,
            set.files.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

/// The FTP source folder of the tests, as the devices' uploads fill it.
const SOURCE_FOLDER: &str = "terawang";

impl Site {
    /// Takes taps from `/terawang` on the site's FTP server, listed every `poll_s`.
    fn with_ftp_source(&mut self, poll_s: f64) -> PathBuf {
        self.extra_env.extend([
            ("FTP_SOURCE_FOLDER".into(), format!("/{SOURCE_FOLDER}")),
            ("FTP_POLL_SECONDS".into(), poll_s.to_string()),
        ]);
        let source = self.ftp_root.join(SOURCE_FOLDER);
        std::fs::create_dir_all(&source).unwrap();
        source
    }

    /// The files left in the FTP source folder (not its `rejected/`), sorted.
    fn remote_sources(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ftp_root.join(SOURCE_FOLDER))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The copies staged from the FTP source folder and not yet delivered.
    fn staged(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.temp.join("ftp-source")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// The median of a report's velocities, m/s.
fn median_velocity(report: &serde_json::Value) -> f64 {
    let mut v: Vec<f64> = report["velocity_m_s"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().filter_map(|x| x.as_f64()))
        .filter(|v| *v > 0.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn ftp_source_sets_with_a_survey_reach_every_sink_and_leave_the_server() {
    let mut site = Site::new("ftpsource");
    let graph_queue = format!("graph-{}", site.queue);
    let source = site.with_ftp_source(0.3);
    site.extra_env.extend([
        ("FTP_FOLDER_DATA_ROW".into(), "/data_row".into()),
        ("RABBITMQ_GRAPH_QUEUE".into(), graph_queue.clone()),
    ]);
    let _ftp = site.ftp();
    // Two trees 0.5 m across, two devices; the first one's survey says so.
    let params = SimParams {
        diameter_m: 0.5,
        velocity_m_s: 1500.0,
        ..SimParams::default()
    };
    let (files, truth) = simulate_many(&params, 2, 31, false);
    let surveyed = &truth.sets[0];
    let survey_name = format!("{}_{}_survey.json", surveyed.device, surveyed.unix_s + 120);
    let survey = format!(
        r#"{{"circumference_cm": {}, "species": "Mahoni", "height_m": 1.3}}"#,
        50.0 * std::f64::consts::PI
    );
    std::fs::write(source.join(&survey_name), &survey).unwrap();
    for f in &files {
        std::fs::write(source.join(&f.file_name), &f.json).unwrap();
    }
    let child = site.start(false);
    wait_until(
        "both sets to leave the server",
        Duration::from_secs(60),
        || site.remote_sources().is_empty(),
    );
    terminate(child, &site);
    assert!(
        site.staged().is_empty(),
        "staged copies left: {:?}",
        site.staged()
    );
    assert!(!source.join("rejected").exists(), "{}", site.log());
    // Results on FTP, raw files (and the survey) byte for byte in the archive.
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    for name in &want {
        assert!(site.ftp_file(name).exists(), "{name} not on FTP");
    }
    let archived = |name: &str| std::fs::read(site.ftp_root.join("data_row").join(name));
    for f in &files {
        assert_eq!(archived(&f.file_name).unwrap(), f.json.as_bytes());
    }
    assert_eq!(archived(&survey_name).unwrap(), survey.as_bytes());
    // One result message and one viewer message per set.
    assert_eq!(site.published_names(), want);
    let mut graph: Vec<serde_json::Value> = site
        .vhost
        .drain(&graph_queue)
        .into_iter()
        .map(|(body, _)| serde_json::from_str(&body).unwrap())
        .collect();
    graph.sort_by_key(|m| m["GUID_SURVEY"].as_str().unwrap().to_string());
    assert_eq!(graph.len(), 2, "{graph:?}");
    for (msg, set) in graph.iter().zip(&truth.sets) {
        assert_eq!(
            msg["GUID_SURVEY"].as_str().unwrap(),
            set.result_file.trim_end_matches(".json")
        );
        assert_eq!(msg["data"], serde_json::json!(set.files));
    }
    assert_eq!(graph[0]["species"], "Mahoni");
    assert!((graph[0]["keliling"].as_f64().unwrap() - 157.08).abs() < 0.01);
    assert_eq!(graph[0]["ketinggian"], 1.3);
    assert_eq!(graph[0]["jumlah_sensor"], 8);
    assert!(graph[1].get("species").is_none(), "{}", graph[1]);
    // The surveyed set is computed as 0.5 m across and matches the truth; the other one,
    // computed with the default 0.3 m, comes out 0.6 times too slow.
    let report = |set: &terawang::simulate::SetTruth| -> serde_json::Value {
        let path = site
            .result
            .join(set.result_file.replace(".json", ".report.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (with, without) = (report(&truth.sets[0]), report(&truth.sets[1]));
    assert_eq!(with["diameter_source"], "survey");
    assert_eq!(with["survey_file"], survey_name.as_str());
    assert!((with["diameter_m"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    let v = median_velocity(&with);
    assert!((v / 1500.0 - 1.0).abs() < 0.05, "surveyed set: {v} m/s");
    assert_eq!(without["diameter_source"], "default");
    let v = median_velocity(&without);
    assert!((v / 1500.0 - 0.6).abs() < 0.05, "default diameter: {v} m/s");
}

#[test]
fn ftp_source_waits_for_a_growing_file_and_sets_a_corrupt_one_aside_on_the_server() {
    let mut site = Site::new("ftpgrow");
    let source = site.with_ftp_source(1.0);
    let _ftp = site.ftp();
    let (files, truth) = sets(2, 32);
    let corrupt = &truth.sets[1].files[2];
    // Set 0 without its tap 8 (it comes later, slowly); set 1 with a corrupt tap 3.
    for f in files[..7].iter().chain(&files[8..]) {
        let json = if &f.file_name == corrupt {
            "{\"not\": json"
        } else {
            f.json.as_str()
        };
        std::fs::write(source.join(&f.file_name), json).unwrap();
    }
    let child = site.start(false);
    // Tap 8 of set 0 grows for 4 s, longer than several listings: every listing sees
    // another size, so it must not be taken (it would be rejected as cut short).
    let growing = &files[7];
    let bytes = growing.json.as_bytes();
    let parts = 40;
    let mut file = std::fs::File::create(source.join(&growing.file_name)).unwrap();
    for k in 0..parts {
        let (a, b) = (k * bytes.len() / parts, (k + 1) * bytes.len() / parts);
        file.write_all(&bytes[a..b]).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !site.staged().contains(&growing.file_name),
            "taken while still growing; log:\n{}",
            site.log()
        );
    }
    drop(file);
    wait_until("set 0 to be published", Duration::from_secs(30), || {
        !site.vhost.drain(&site.queue).is_empty()
    });
    let rejected = source.join("rejected");
    wait_until(
        "the corrupt tap to be moved aside",
        Duration::from_secs(30),
        || rejected.join(corrupt).exists(),
    );
    terminate(child, &site);
    assert!(
        !rejected.join(&growing.file_name).exists(),
        "{}",
        site.log()
    );
    let reason = std::fs::read_to_string(rejected.join(format!("{corrupt}.reason.txt"))).unwrap();
    assert!(!reason.trim().is_empty());
    assert!(site.ftp_file(&truth.sets[0].result_file).exists());
    // Set 0 left the server; set 1's seven good taps wait there for their missing tap.
    let left = site.remote_sources();
    assert_eq!(left.len(), 7, "{left:?}");
    assert!(left.iter().all(|n| truth.sets[1].files.contains(n)));
}

#[test]
fn kill_9_during_ftp_source_delivery_then_restart_delivers_every_set() {
    let mut site = Site::new("ftpkill9");
    let source = site.with_ftp_source(0.3);
    site.extra_env
        .push(("FTP_FOLDER_DATA_ROW".into(), "/data_row".into()));
    let _ftp = site.ftp();
    let (files, truth) = sets(30, 33);
    for f in &files {
        std::fs::write(source.join(&f.file_name), &f.json).unwrap();
    }
    let mut child = site.start(false);
    wait_until("the first result on FTP", Duration::from_secs(60), || {
        std::fs::read_dir(site.ftp_root.join("result")).is_ok_and(|mut d| d.next().is_some())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !site.remote_sources().is_empty(),
        "the kill came too late to test anything"
    );
    let child = site.start(false);
    wait_until(
        "every set to leave the server",
        Duration::from_secs(90),
        || site.remote_sources().is_empty(),
    );
    terminate(child, &site);
    let mut got = site.published_names();
    got.dedup(); // at-least-once: the set in flight at the kill may be published twice
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(got, want, "{}", site.log());
    for f in &files {
        let archived = std::fs::read(site.ftp_root.join("data_row").join(&f.file_name))
            .unwrap_or_else(|e| panic!("{} not archived: {e}", f.file_name));
        assert_eq!(archived, f.json.as_bytes());
    }
    assert!(site.staged().is_empty(), "{:?}", site.staged());
    assert!(!source.join("rejected").exists(), "{}", site.log());
    let journal = std::fs::read_to_string(site.temp.join("journal.log")).unwrap();
    let left = terawang::journal::JournalState::replay(&journal);
    assert!(left.sets.is_empty(), "{left:?}");
}

#[test]
fn a_rejected_survey_holds_its_set_for_a_good_one_then_the_default_is_used_with_a_warning() {
    let mut site = Site::new("survey");
    site.settle_s = 1.0;
    let _ftp = site.ftp();
    let (files, truth) = sets(2, 34);
    let survey_of = |set: usize, after_s: i64| {
        let s = &truth.sets[set];
        format!("{}_{}_survey.json", s.device, s.unix_s + after_s)
    };
    let bad = r#"{"diameter_m": 5.0}"#;
    // Set 0: only a bad survey (5 m across). Set 1: a bad one, then a good one soon after.
    std::fs::create_dir_all(&site.data).unwrap();
    std::fs::write(site.data.join(survey_of(0, 60)), bad).unwrap();
    std::fs::write(site.data.join(survey_of(1, 60)), bad).unwrap();
    for f in &files {
        site.drop_file(f);
    }
    let child = site.start(false);
    let rejected = site.data.join("rejected");
    wait_until(
        "both bad surveys to be rejected",
        Duration::from_secs(20),
        || rejected.join(survey_of(0, 60)).exists() && rejected.join(survey_of(1, 60)).exists(),
    );
    let good = format!(r#"{{"circumference_cm": {}}}"#, 50.0 * std::f64::consts::PI);
    std::fs::write(site.data.join(survey_of(1, 90)), &good).unwrap();
    wait_until("both sets to be delivered", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    terminate(child, &site);
    let reason = std::fs::read_to_string(rejected.join(format!("{}.reason.txt", survey_of(0, 60))));
    assert!(reason.unwrap().contains("outside 0.05–3 m"));
    let report = |set: usize| -> serde_json::Value {
        let name = truth.sets[set].result_file.replace(".json", ".report.json");
        serde_json::from_slice(&std::fs::read(site.result.join(name)).unwrap()).unwrap()
    };
    let (r0, r1) = (report(0), report(1));
    assert_eq!(r0["diameter_source"], "default", "{r0}");
    assert_eq!(r0["diameter_m"], 0.3);
    let warnings = r0["warnings"].to_string();
    assert!(
        warnings.contains(&format!("survey file {} was rejected", survey_of(0, 60))),
        "{warnings}"
    );
    assert_eq!(r1["diameter_source"], "survey", "{}", site.log());
    assert_eq!(r1["survey_file"], survey_of(1, 90).as_str());
    assert!((r1["diameter_m"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!(!r1["warnings"].to_string().contains("survey"));
    // The good survey went with its set; the bad ones stay aside.
    assert!(!site.data.join(survey_of(1, 90)).exists());
}

#[test]
fn an_ftp_outage_while_polling_loses_nothing_and_takes_nothing_twice() {
    let mut site = Site::new("ftpsrcdown");
    let source = site.with_ftp_source(0.3);
    let (files, truth) = sets(3, 35);
    for f in &files {
        std::fs::write(source.join(&f.file_name), &f.json).unwrap();
    }
    // The server is down at start: the listing fails, is retried with backoff, logged once.
    let child = site.start(false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(site.remote_sources().len(), files.len());
    assert!(site.staged().is_empty());
    let ftp = site.ftp();
    wait_until(
        "the sets to leave the server",
        Duration::from_secs(30),
        || site.remote_sources().is_empty(),
    );
    // Down again, then up: nothing left to take, nothing taken twice.
    drop(ftp);
    std::thread::sleep(Duration::from_secs(2));
    let _ftp = site.ftp();
    std::thread::sleep(Duration::from_secs(2));
    terminate(child, &site);
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    assert_eq!(site.published_names(), want);
    let log = site.log();
    let outages = log.matches("FTP source folder /terawang: ").count();
    assert!((1..=2).contains(&outages), "logged once per outage:\n{log}");
    assert!(log.contains("the FTP source folder answers again"), "{log}");
    assert!(site.staged().is_empty());
}

/// The ingest and the workers share the broker and the FTP server; waits until every set's
/// result is on FTP and the job queue is empty.
fn wait_for_results_on_ftp(site: &Site, want: &[String], within: Duration) {
    let t0 = Instant::now();
    loop {
        let missing: Vec<&String> = want.iter().filter(|n| !site.ftp_file(n).exists()).collect();
        if missing.is_empty() {
            return;
        }
        if t0.elapsed() > within {
            let log = site.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{} results not on FTP after {within:?}: {missing:?}\nlog (last lines first):\n{}",
                missing.len(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scale_out(site: &Site, kill_one: bool) {
    let _ftp = site.ftp();
    let (_, truth) = site.drop_sets(40, 36);
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    let ingest = site.start_role("ingest", "ingest");
    // The jobs wait in the queue until the workers come.
    wait_until(
        "the sources to be enqueued",
        Duration::from_secs(60),
        || site.json_files_in_data().is_empty(),
    );
    let mut workers: Vec<Service> = (0..3)
        .map(|w| site.start_role("worker", &format!("worker-{w}")))
        .collect();
    if kill_one {
        wait_until("the first result", Duration::from_secs(60), || {
            want.iter().any(|n| site.ftp_file(n).exists())
        });
        workers[0].kill().unwrap(); // SIGKILL, holding jobs it fetched ahead
        workers[0].wait().unwrap();
    }
    wait_for_results_on_ftp(site, &want, Duration::from_secs(120));
    // Every job acknowledged: nothing left for another worker.
    wait_until("the job queue to empty", Duration::from_secs(30), || {
        site.vhost.drain_declared(&site.job_queue()).is_empty()
    });
    for w in workers.drain(..).skip(usize::from(kill_one)) {
        terminate(w, site);
    }
    terminate(ingest, site);
    let got = site.published_names();
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(distinct, want, "{}", site.log());
    if !kill_one {
        assert_eq!(got.len(), 40, "each set published once");
    }
    assert!(
        site.vhost
            .drain_declared(&format!("{}_rejected", site.job_queue()))
            .is_empty()
    );
    assert!(site.json_files_in_data().is_empty());
}

#[test]
fn one_ingest_and_three_workers_deliver_every_set_once() {
    scale_out(&Site::new("scaleout"), false);
}

#[test]
fn a_worker_killed_while_it_holds_jobs_loses_nothing() {
    scale_out(&Site::new("scalekill"), true);
}

#[test]
fn enqueue_an_archive_with_two_workers_and_a_corrupt_job_goes_to_the_dead_letter_queue() {
    let site = Site::new("enqueue");
    let _ftp = site.ftp();
    let archive = site.root.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let (files, truth) = sets(20, 37);
    for f in &files {
        std::fs::write(archive.join(&f.file_name), &f.json).unwrap();
    }
    let workers: Vec<Service> = (0..2)
        .map(|w| site.start_role("worker", &format!("worker-{w}")))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_terawang"))
        .arg("enqueue")
        .arg(&archive)
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_VHOST", &site.vhost.name)
        .env("RABBITMQ_JOB_QUEUE", site.job_queue())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("enqueued 20 sets"), "{stdout}");
    // The archive stays (no --delete).
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), files.len());
    // A job whose tap 3 is not JSON, as another producer could send it.
    let bad_files: Vec<SimFile> = sets(1, 38)
        .0
        .iter()
        .map(|f| retimed(f, "BAD-1", 1_800_000_000, "u1"))
        .collect();
    let job = terawang::job::Job {
        files: bad_files
            .iter()
            .enumerate()
            .map(|(k, f)| terawang::job::JobFile {
                name: f.file_name.clone(),
                bytes: if k == 2 {
                    b"{\"not\": json".to_vec()
                } else {
                    f.json.clone().into_bytes()
                },
            })
            .collect(),
    };
    let amqp = terawang::config::AmqpConfig {
        host: "127.0.0.1".into(),
        port: 5672,
        user: "guest".into(),
        password: "guest".into(),
        vhost: site.vhost.name.clone(),
        queue: site.job_queue(),
        durable: true,
        tls: false,
        graph_queue: None,
    };
    terawang::job::JobPublisher::new(&amqp, &site.job_queue())
        .publish(&job)
        .unwrap();
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    wait_for_results_on_ftp(&site, &want, Duration::from_secs(120));
    let dlq = format!("{}_rejected", site.job_queue());
    let mut dead = Vec::new();
    wait_until(
        "the corrupt job on the dead-letter queue",
        Duration::from_secs(30),
        || {
            dead.extend(site.vhost.drain_declared(&dlq));
            !dead.is_empty()
        },
    );
    for w in workers {
        terminate(w, &site);
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, job.encode(), "the job as it was sent");
    let reason = dead[0].1.clone().unwrap_or_default();
    assert!(reason.contains(&bad_files[2].file_name), "{reason}");
    assert!(!site.ftp_file("result_BAD-1_1800000000.json").exists());
    let got = site.published_names();
    assert_eq!(got, want);
}

#[test]
fn an_ingest_killed_mid_publish_and_dropped_broker_connections_lose_no_set() {
    let site = Site::new("scaledrop");
    let _ftp = site.ftp();
    let (files, truth) = site.drop_sets(40, 39);
    let mut want: Vec<String> = truth.sets.iter().map(|s| s.result_file.clone()).collect();
    want.sort();
    let workers: Vec<Service> = (0..2)
        .map(|w| site.start_role("worker", &format!("worker-{w}")))
        .collect();
    let mut ingest = site.start_role("ingest", "ingest");
    wait_until(
        "the ingest to start publishing",
        Duration::from_secs(60),
        || site.json_files_in_data().len() < files.len(),
    );
    ingest.kill().unwrap(); // SIGKILL, mid-publish
    ingest.wait().unwrap();
    // Every connection of the site's vhost dropped by the broker: the workers reconnect, and
    // the jobs they held go back to the queue.
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &site.vhost.name,
        "test: connections dropped",
    ]);
    let ingest = site.start_role("ingest", "ingest");
    wait_for_results_on_ftp(&site, &want, Duration::from_secs(120));
    wait_until("the job queue to empty", Duration::from_secs(30), || {
        site.vhost.drain_declared(&site.job_queue()).is_empty()
    });
    wait_until("the sources to be removed", Duration::from_secs(30), || {
        site.json_files_in_data().is_empty()
    });
    for w in workers {
        terminate(w, &site);
    }
    terminate(ingest, &site);
    let mut got = site.published_names();
    got.dedup(); // at-least-once: a set in flight may come twice, always with the same name
    assert_eq!(got, want, "{}", site.log());
    assert!(
        site.vhost
            .drain_declared(&format!("{}_rejected", site.job_queue()))
            .is_empty()
    );
    // One name, one content: every worker's copy of a result is the same bytes.
    for name in &want {
        let on_ftp = std::fs::read(site.ftp_file(name)).unwrap();
        for w in 0..2 {
            let local = site.root.join(format!("worker-{w}/result")).join(name);
            if let Ok(bytes) = std::fs::read(local) {
                assert_eq!(bytes, on_ftp, "{name}");
            }
        }
    }
}
