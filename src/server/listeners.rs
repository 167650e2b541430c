//! Binding the configured listeners (after the config is fully validated).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::ServerError;
use crate::config::Listen;

/// The bound sockets; each is optional as in the config.
#[derive(Debug)]
pub struct Listeners {
    pub tls: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    /// Requests handed over by other gateways (`[coordination]`).
    pub peer: Option<TcpListener>,
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

impl Listeners {
    pub async fn bind(listen: &Listen) -> Result<Self, ServerError> {
        async fn one(
            field: &'static str,
            addr: Option<SocketAddr>,
        ) -> Result<Option<TcpListener>, ServerError> {
            match addr {
                None => Ok(None),
                Some(addr) => {
                    TcpListener::bind(addr)
                        .await
                        .map(Some)
                        .map_err(|source| ServerError::Bind {
                            field,
                            addr,
                            source,
                        })
                }
            }
        }
        Ok(Listeners {
            tls: one("listen.tls", listen.tls).await?,
            http: one("listen.http", listen.http).await?,
            admin: one("listen.admin", listen.admin).await?,
            peer: one("listen.peer", listen.peer).await?,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        let a = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        BoundAddrs {
            tls: a(&self.tls),
            http: a(&self.http),
            admin: a(&self.admin),
            peer: a(&self.peer),
        }
    }
}
