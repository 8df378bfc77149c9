//! A TCP proxy in front of a test service, for the faults a real server cannot produce on
//! demand: every connection reset at once ([`TcpProxy::cut_connections`]), the service gone
//! (nothing listening, [`TcpProxy::cut`], until [`TcpProxy::restore`]), or a network path gone
//! silent with its sockets still open ([`TcpProxy::freeze`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Forwards every connection to its `addr` on to `upstream` (`host:port`).
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: String,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    freeze: Arc<Notify>,
}

impl TcpProxy {
    pub async fn start(upstream: impl Into<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut proxy = Self {
            addr: listener.local_addr().unwrap(),
            upstream: upstream.into(),
            accept: None,
            conns: Arc::default(),
            freeze: Arc::new(Notify::new()),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream.clone();
        let conns = self.conns.clone();
        let freeze = self.freeze.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let freeze = freeze.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
                        () = freeze.notified() => true,
                    };
                    if froze {
                        // Both sockets stay open and nothing passes, until cut, dropped, or
                        // the client closes its side (what it sends is read and dropped, so
                        // its close is seen).
                        let mut sink = [0u8; 4096];
                        while matches!(down.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                });
                conns.lock().unwrap().push(task);
            }
        }));
    }

    /// Drops every proxied connection (both sides see the socket close); new connections still
    /// pass. Returns how many were open.
    pub fn cut_connections(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let open = conns.iter().filter(|t| !t.is_finished()).count();
        for t in conns.drain(..) {
            t.abort();
        }
        open
    }

    /// How many proxied connections are open: a frozen one closes when its client closes it.
    pub fn open_connections(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.iter().filter(|t| !t.is_finished()).count()
    }

    /// Closes the listener and every connection: the service is unreachable until
    /// [`restore`](Self::restore).
    pub async fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        self.cut_connections();
    }

    /// Listens on the same address again.
    pub async fn restore(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        self.serve(socket.listen(64).unwrap());
    }

    /// Stops forwarding on every open connection, both ways, and keeps their sockets open: a
    /// network path gone silent without a reset. Connections opened afterwards pass.
    pub fn freeze(&self) {
        self.freeze.notify_waiters();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.cut_connections();
    }
}
