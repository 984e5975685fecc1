//! The real `annotask` binary as a child process, for multi-replica and CLI tests.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
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
