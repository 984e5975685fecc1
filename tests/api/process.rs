//! The real `annotask` binary as a child process, for multi-replica and CLI tests.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free loopback port (bound, read, released).
/// A port for a server process to listen on. Picked at random below Linux's ephemeral range
/// (32768 and up): a port the kernel hands out for `bind(0)` can be taken by an outgoing
/// connection (the suite opens thousands) before the server binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    for _ in 0..1000 {
        let port = rand::rng().random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

/// `annotask serve` on its own port; killed when dropped.
pub struct ServerProcess {
    pub base_url: String,
    child: Child,
}

impl ServerProcess {
    /// Starts a replica over `database_url` and waits until `/healthz` answers.
    pub async fn start(database_url: &str) -> ServerProcess {
        Self::start_with_env(database_url, &[]).await
    }

    /// Starts a replica with extra environment (e.g. a callback schedule).
    pub async fn start_with_env(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_annotask"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn annotask");
        let server = ServerProcess {
            base_url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        loop {
            let healthy = http
                .get(format!("{}/healthz", server.base_url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if healthy {
                return server;
            }
            assert!(Instant::now() < deadline, "annotask did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl ServerProcess {
    /// SIGKILL: no graceful shutdown, as in a crash.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
