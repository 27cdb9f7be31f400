//! What every limited route passes before its handler: the client's
//! allowance for the route's class.

use std::net::IpAddr;

use super::LimiterPolicy;
use crate::audit::SECURITY_TARGET;
use crate::clock::SharedClock;
use crate::error::{Error, RateLimitInfo, Result};
use crate::rate_limiter::{RateLimits, RouteClass};

#[derive(Clone)]
pub struct Edge {
    pub limits: RateLimits,
    pub policy: LimiterPolicy,
    pub clock: SharedClock,
}

impl Edge {
    /// Counts one request of `class` from `client`: the header values, or
    /// `None` when the limiter could not decide and policy let the request
    /// through; `RateLimited` when the allowance is spent.
    pub async fn check_rate(
        &self,
        class: RouteClass,
        client: IpAddr,
    ) -> Result<Option<RateLimitInfo>> {
        let now = self.clock.now_ms();
        let decision = match self.limits.check(class, client, now).await? {
            Ok(decision) => decision,
            Err(unshared) => match self.policy.fall_back(unshared)? {
                Some(local) => local,
                None => return Ok(None),
            },
        };
        if decision.allowed {
            return Ok(Some(decision.info));
        }
        if decision.first_refusal {
            tracing::warn!(target: SECURITY_TARGET, event = "rate_limit.exceeded",
                ip = %client, class = class.name(),
                limit = decision.info.limit, "client exceeded its rate limit");
        }
        Err(Error::RateLimited(decision.info))
    }
}
