//! Routes: (method, path template) → endpoint, with 404 and 405 + `Allow`.
//!
//! [`ROUTES`] is the one list of what Gatehouse serves; the OpenAPI document
//! is checked against it, and metrics and logs label requests with its
//! templates, never with raw paths.

use gatehouse_actors::rate_limiter::RouteClass;
use hyper::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Register,
    Login,
    Refresh,
    Logout,
    LogoutAll,
    GetMe,
    UpdateMe,
    DeleteMe,
    ChangePassword,
    ListSessions,
    DeleteSession,
    Health,
    CircuitBreakers,
    MetricsSummary,
    Actors,
    KillActor,
    Prometheus,
    OpenApi,
}

impl Endpoint {
    /// The rate-limit allowance this endpoint draws from, if any.
    pub fn rate_class(self) -> Option<RouteClass> {
        match self {
            Self::Login => Some(RouteClass::Login),
            Self::Register => Some(RouteClass::Register),
            Self::Refresh => Some(RouteClass::Refresh),
            Self::ChangePassword => Some(RouteClass::Password),
            Self::Logout
            | Self::LogoutAll
            | Self::GetMe
            | Self::UpdateMe
            | Self::DeleteMe
            | Self::ListSessions
            | Self::DeleteSession => Some(RouteClass::Default),
            Self::Health
            | Self::CircuitBreakers
            | Self::MetricsSummary
            | Self::Actors
            | Self::KillActor
            | Self::Prometheus
            | Self::OpenApi => None,
        }
    }

    /// The media types of the request body this endpoint reads, if it reads one.
    pub fn body(self) -> Option<&'static [&'static str]> {
        use crate::http::body::{FORM, JSON};
        match self {
            Self::Login => Some(&[JSON, FORM]),
            Self::Register | Self::Refresh | Self::UpdateMe | Self::ChangePassword => Some(&[JSON]),
            _ => None,
        }
    }

    /// Needs the monitoring token when one is configured.
    pub fn monitoring_protected(self) -> bool {
        matches!(
            self,
            Self::CircuitBreakers
                | Self::MetricsSummary
                | Self::Actors
                | Self::KillActor
                | Self::Prometheus
        )
    }
}

pub struct RouteSpec {
    pub template: &'static str,
    pub methods: &'static [(Method, Endpoint)],
}

/// Everything Gatehouse serves.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        template: "/api/v1/auth/register",
        methods: &[(Method::POST, Endpoint::Register)],
    },
    RouteSpec {
        template: "/api/v1/auth/login",
        methods: &[(Method::POST, Endpoint::Login)],
    },
    RouteSpec {
        template: "/api/v1/auth/refresh",
        methods: &[(Method::POST, Endpoint::Refresh)],
    },
    RouteSpec {
        template: "/api/v1/auth/logout",
        methods: &[(Method::POST, Endpoint::Logout)],
    },
    RouteSpec {
        template: "/api/v1/auth/logout-all",
        methods: &[(Method::POST, Endpoint::LogoutAll)],
    },
    RouteSpec {
        template: "/api/v1/users/me",
        methods: &[
            (Method::GET, Endpoint::GetMe),
            (Method::PUT, Endpoint::UpdateMe),
            (Method::DELETE, Endpoint::DeleteMe),
        ],
    },
    RouteSpec {
        template: "/api/v1/users/me/password",
        methods: &[(Method::PATCH, Endpoint::ChangePassword)],
    },
    RouteSpec {
        template: "/api/v1/users/me/sessions",
        methods: &[(Method::GET, Endpoint::ListSessions)],
    },
    RouteSpec {
        template: "/api/v1/users/me/sessions/{id}",
        methods: &[(Method::DELETE, Endpoint::DeleteSession)],
    },
    RouteSpec {
        template: "/api/v1/monitoring/health",
        methods: &[(Method::GET, Endpoint::Health)],
    },
    RouteSpec {
        template: "/api/v1/monitoring/circuit-breakers",
        methods: &[(Method::GET, Endpoint::CircuitBreakers)],
    },
    RouteSpec {
        template: "/api/v1/monitoring/metrics",
        methods: &[(Method::GET, Endpoint::MetricsSummary)],
    },
    RouteSpec {
        template: "/api/v1/monitoring/actors",
        methods: &[(Method::GET, Endpoint::Actors)],
    },
    RouteSpec {
        template: KILL_ROUTE,
        methods: &[(Method::POST, Endpoint::KillActor)],
    },
    RouteSpec {
        template: "/metrics",
        methods: &[(Method::GET, Endpoint::Prometheus)],
    },
    RouteSpec {
        template: "/api/v1/openapi.json",
        methods: &[(Method::GET, Endpoint::OpenApi)],
    },
];

/// The chaos route: it exists only while `monitoring.chaos` is on.
pub const KILL_ROUTE: &str = "/api/v1/monitoring/actors/{name}/kill";

/// The label used for requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

pub enum Matched<'r> {
    Found {
        endpoint: Endpoint,
        template: &'static str,
        /// The `{id}` or `{name}` segment, for routes that have one.
        param: Option<String>,
    },
    MethodNotAllowed {
        template: &'static str,
        /// The `Allow` header value: this path's methods.
        allow: &'r str,
    },
    NotFound,
}

pub struct Router {
    paths: matchit::Router<usize>,
    allow: Vec<String>,
}

impl Router {
    /// `chaos` adds the actor-kill route; without it that path does not exist.
    pub fn new(chaos: bool) -> Result<Self, matchit::InsertError> {
        let mut paths = matchit::Router::new();
        let mut allow = Vec::new();
        for (i, spec) in ROUTES.iter().enumerate() {
            if chaos || spec.template != KILL_ROUTE {
                paths.insert(spec.template, i)?;
            }
            let mut methods: Vec<&str> = Vec::new();
            for (method, _) in spec.methods {
                methods.push(method.as_str());
                if method == Method::GET {
                    methods.push(Method::HEAD.as_str());
                }
            }
            allow.push(methods.join(", "));
        }
        Ok(Self { paths, allow })
    }

    /// The endpoint for `method` on `path`; `HEAD` is answered wherever `GET` is.
    pub fn route(&self, method: &Method, path: &str) -> Matched<'_> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let Ok(found) = self.paths.at(path) else {
            return Matched::NotFound;
        };
        let index = *found.value;
        let Some(spec) = ROUTES.get(index) else {
            return Matched::NotFound;
        };
        match spec.methods.iter().find(|(m, _)| m == method) {
            Some((_, endpoint)) => Matched::Found {
                endpoint: *endpoint,
                template: spec.template,
                param: found.params.iter().next().map(|(_, v)| v.to_owned()),
            },
            None => Matched::MethodNotAllowed {
                template: spec.template,
                allow: self.allow.get(index).map_or("", String::as_str),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_methods_and_unknown_paths() {
        let r = Router::new(false).unwrap();
        assert!(matches!(
            r.route(&Method::POST, "/api/v1/auth/login"),
            Matched::Found {
                endpoint: Endpoint::Login,
                ..
            }
        ));
        match r.route(&Method::GET, "/api/v1/auth/login") {
            Matched::MethodNotAllowed { allow, .. } => assert_eq!(allow, "POST"),
            _ => panic!("expected 405"),
        }
        match r.route(&Method::POST, "/api/v1/users/me") {
            Matched::MethodNotAllowed { allow, .. } => assert_eq!(allow, "GET, HEAD, PUT, DELETE"),
            _ => panic!("expected 405"),
        }
        assert!(matches!(
            r.route(&Method::HEAD, "/api/v1/users/me"),
            Matched::Found {
                endpoint: Endpoint::GetMe,
                ..
            }
        ));
        assert!(matches!(
            r.route(&Method::GET, "/api/v1/nope"),
            Matched::NotFound
        ));
        assert!(matches!(
            r.route(&Method::GET, "/api/v1/users/me/"),
            Matched::NotFound
        ));
    }
}
