//! What the benchmark harnesses share: settings from the environment, free loopback ports,
//! `gannet serve` started and stopped.

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback port nothing listens on right now.
#[allow(dead_code)] // not every bench starts a server
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
#[allow(dead_code)] // not every bench starts a server
pub struct Server {
    pub name: &'static str,
    pub child: std::process::Child,
    pub write_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to a minute for `url` to answer `expect_status`.
#[allow(dead_code)] // not every bench starts a server
pub fn wait_until_up(url: &str, expect_status: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(response) = ureq::get(url).call()
            && response.status().as_u16() == expect_status
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{url} did not come up");
}

/// `gannet serve` (this build's binary, or `$GANNET_BIN` to compare another build) on
/// `dir`, listening on free loopback ports, once it answers `/health`; and its Postgres
/// port.
#[allow(dead_code)] // not every bench starts a server
pub fn start_gannet(dir: &std::path::Path) -> (Server, u16) {
    let http = free_port();
    let pg = free_port();
    let bin = std::env::var_os("GANNET_BIN").unwrap_or(env!("CARGO_BIN_EXE_gannet").into());
    let child = std::process::Command::new(bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--pg-addr", &format!("127.0.0.1:{pg}")])
        .env("GANNET_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gannet serve");
    wait_until_up(&format!("http://127.0.0.1:{http}/health"), 200);
    let server = Server {
        name: "gannet",
        child,
        write_url: format!("http://127.0.0.1:{http}/write?db=bench&precision=ns"),
    };
    (server, pg)
}
