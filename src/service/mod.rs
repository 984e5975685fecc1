//! The one service layer: every rule of the API lives here, whatever the transport.

mod auth;
mod tasks;

pub use auth::{credential_from_authorization, generate_api_key};
pub use tasks::{tags_from_json, TaskPage};

use crate::{config::Limits, error::Result, store::Store};

pub struct Service {
    store: Store,
    limits: Limits,
}

impl Service {
    pub fn new(store: Store, limits: Limits) -> Self {
        Service { store, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub async fn health(&self) -> Result<()> {
        self.store.ping().await
    }
}
