//! Processes and their surroundings: a running `chipsd` ([`Sidecar`]), scratch directories, free
//! ports, and waiting for a condition.

use crate::*;

/// A scratch directory for one test process, `$TMPDIR/chipsd-<tag>-<pid>`, created if missing;
/// the test removes it when done.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chipsd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory under the temp dir");
    dir
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on 127.0.0.1:`port`; false after `limit`.
pub fn wait_port(port: u16, limit: std::time::Duration) -> bool {
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// A running `chipsd`, killed (SIGKILL) when dropped.
pub struct Sidecar {
    pub child: std::process::Child,
    program: std::path::PathBuf,
    args: Vec<String>,
    log: String,
    port: u16,
}

impl Sidecar {
    /// `chipsd run` for `site` on 127.0.0.1:`port`, its agent key written into `dir`, with
    /// `extra` flags; returns once it listens. `log` is its `CHIPSD_LOG`.
    pub fn start(
        chipsd: &std::path::Path,
        site: &Site,
        port: u16,
        dir: &std::path::Path,
        extra: &[&str],
        log: &str,
    ) -> std::io::Result<Sidecar> {
        let key = site.write_agent_key(dir)?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--db".into(),
            site.dsn.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--key".into(),
            key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Sidecar::spawn(chipsd, args, port, log)
    }

    /// The process id of the running chipsd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Any `chipsd` command line that listens on 127.0.0.1:`port`; returns once it listens.
    pub fn spawn(
        chipsd: &std::path::Path,
        args: Vec<String>,
        port: u16,
        log: &str,
    ) -> std::io::Result<Sidecar> {
        let child = Self::launch(chipsd, &args, log)?;
        let mut s = Sidecar {
            child,
            program: chipsd.to_path_buf(),
            args,
            log: log.to_string(),
            port,
        };
        s.wait_listening()?;
        Ok(s)
    }

    fn launch(
        chipsd: &std::path::Path,
        args: &[String],
        log: &str,
    ) -> std::io::Result<std::process::Child> {
        std::process::Command::new(chipsd)
            .args(args)
            .env("CHIPSD_LOG", log)
            .stdout(std::process::Stdio::null())
            .spawn()
    }

    fn wait_listening(&mut self) -> std::io::Result<()> {
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.child.try_wait()?.is_some() {
                return Err(std::io::Error::other("chipsd exited before listening"));
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                return Err(std::io::Error::other("chipsd did not listen within 20 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same command line.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.child = Self::launch(&self.program, &self.args, &self.log)?;
        self.wait_listening()
    }

    /// SIGTERM, then up to `grace` for it to exit; its exit status, or None when it had to be
    /// killed.
    pub fn stop(&mut self, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t = std::time::Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill9();
        None
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `f` holds, checking every `every`; an error naming `what` after `limit`.
pub async fn eventually<F, Fut>(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    f: F,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = std::time::Instant::now();
    while !f().await {
        if t.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for: {what}"));
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// For benchmarks: waits (up to 60 s, checking every millisecond) until `f` holds; panics after.
pub async fn until<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(
        "the benchmark",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(1),
        f,
    )
    .await
    .unwrap();
}

/// The `p` quantile (0..=1, nearest rank) of `v`, which it sorts.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}
