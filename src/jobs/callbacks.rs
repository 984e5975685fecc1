//! Callback delivery: claims due deliveries from the outbox, signs and POSTs each one, and
//! records the outcome. Every attempt runs on its own task under a bounded number of
//! permits, so a slow or dead receiver holds one permit for at most the attempt timeout and
//! never delays another receiver.

use std::{
    error::Error as StdError,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER},
    redirect,
};
use serde_json::json;
use tokio::{sync::Semaphore, task::JoinSet};

use super::Shutdown;
use crate::{
    api::rest::json,
    config::CallbackSettings,
    domain::{CallbackSubject, Delivery, Timestamp},
    service::{sign_webhook, AttemptOutcome, Service},
};

pub async fn run(service: Arc<Service>, mut shutdown: Shutdown) {
    let settings = service.callback_settings().clone();
    let sender = match Sender::new(&settings) {
        Ok(sender) => Arc::new(sender),
        Err(err) => {
            tracing::error!(error = %err, "callback delivery cannot start: no HTTP client");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut attempts = JoinSet::new();
    loop {
        while attempts.try_join_next().is_some() {}
        let free = permits.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            service
                .claim_due_deliveries(free)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "claiming due callbacks failed");
                    Vec::new()
                })
        };
        let maybe_more_due = free > 0 && claimed.len() == free;
        for delivery in claimed {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (service, sender) = (service.clone(), sender.clone());
            attempts.spawn(async move {
                attempt(&service, &sender, delivery).await;
                drop(permit);
            });
        }
        if maybe_more_due {
            continue;
        }
        tokio::select! {
            () = shutdown.requested() => break,
            () = service.deliveries_waiting() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
        }
    }
    // Attempts under way finish (each within its timeout) and record their outcome.
    while attempts.join_next().await.is_some() {}
}

async fn attempt(service: &Service, sender: &Sender, delivery: Delivery) {
    let started = Instant::now();
    let outcome = sender.send(service, &delivery).await;
    metrics::histogram!("annotask_callback_attempt_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if let AttemptOutcome::Failed { error, .. } | AttemptOutcome::Refused { error } = &outcome {
        tracing::info!(webhook_id = %delivery.webhook_id, error = %error, "callback attempt failed");
    }
    if let Err(err) = service.record_attempt(&delivery, outcome).await {
        // The claim lapses and the attempt is made again: at least once, never lost.
        tracing::warn!(webhook_id = %delivery.webhook_id, error = %err, "recording a callback attempt failed");
    }
}

/// The reason a target was refused, found again in reqwest's error chain.
#[derive(Debug)]
struct PrivateTarget(IpAddr);

impl std::fmt::Display for PrivateTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "callback target {} is a loopback, private, link-local or metadata address; set --allow-private-callbacks to allow it", self.0)
    }
}

impl StdError for PrivateTarget {}

/// Resolves callback hosts, refusing any name with a private address among its answers, so
/// the check holds on the address actually dialled (no DNS rebinding between check and use).
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if !allow_private {
                if let Some(private) = addrs.iter().find(|addr| is_private(addr.ip())) {
                    return Err(
                        Box::new(PrivateTarget(private.ip())) as Box<dyn StdError + Send + Sync>
                    );
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Loopback, private, shared, link-local (which holds the cloud metadata address),
/// unspecified, broadcast or multicast.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    fn new(settings: &CallbackSettings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .timeout(settings.attempt_timeout)
            .connect_timeout(settings.attempt_timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("annotask/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            client,
            allow_private: settings.allow_private,
        })
    }

    async fn send(&self, service: &Service, delivery: &Delivery) -> AttemptOutcome {
        let failed = |error: String| AttemptOutcome::Failed {
            error,
            retry_after: None,
        };
        let url = match reqwest::Url::parse(&delivery.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => {
                return AttemptOutcome::Refused {
                    error: "the callback_url is not an http(s) URL".to_owned(),
                }
            }
        };
        // IP literals never reach the resolver: check them here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.allow_private && is_private(*ip)) {
            return AttemptOutcome::Refused {
                error: PrivateTarget(ip).to_string(),
            };
        }
        let secrets = match service.callback_secrets(delivery.scope.account_id).await {
            Ok(secrets) => secrets,
            Err(err) => return failed(format!("callback secrets unavailable: {err}")),
        };
        let body = match &delivery.subject {
            CallbackSubject::Task(task) => json!({
                "task_id": task.id.as_str(),
                "status": task.status.as_str(),
                "response": task.response,
                "task": json::task(task),
            }),
            CallbackSubject::Batch(batch) => json!({
                "batch_name": batch.name,
                "status": batch.status.as_str(),
                "batch": json::batch(batch),
            }),
        }
        .to_string();
        let timestamp = Timestamp::now().seconds();
        let signature = match sign_webhook(
            &secrets.signing_secret,
            &delivery.webhook_id,
            timestamp,
            body.as_bytes(),
        ) {
            Ok(signature) => signature,
            Err(err) => return failed(format!("signing failed: {err}")),
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let values = [
            ("scale-callback-auth", secrets.auth_key.as_str()),
            ("webhook-id", delivery.webhook_id.as_str()),
            ("webhook-timestamp", &timestamp.to_string()),
            ("webhook-signature", signature.as_str()),
        ];
        for (name, value) in values {
            match HeaderValue::from_str(value) {
                Ok(value) => {
                    headers.insert(name, value);
                }
                Err(_) => return failed(format!("header {name} is not a valid value")),
            }
        }
        match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => AttemptOutcome::Delivered,
            Ok(response) => AttemptOutcome::Failed {
                error: format!("the receiver answered {}", response.status()),
                retry_after: response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_retry_after),
            },
            Err(err) => match refused_target(&err) {
                Some(refused) => AttemptOutcome::Refused {
                    error: refused.to_string(),
                },
                None if err.is_timeout() => {
                    failed("no answer within the attempt timeout".to_owned())
                }
                None => failed(format!("request failed: {}", error_chain(&err))),
            },
        }
    }
}

fn refused_target(err: &reqwest::Error) -> Option<&PrivateTarget> {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<PrivateTarget>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let millis = at
        .timestamp_millis()
        .saturating_sub(Timestamp::now().millis());
    Some(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_private() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
