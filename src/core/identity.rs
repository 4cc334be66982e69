//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";

/// A workload identity as Istio issues it.
///
/// Cheap to clone and one pointer wide (connection logs, the connection tracker and
/// certificates each hold one per connection), compared field by field.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Parts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: Box<str>,
    namespace: Box<str>,
    service_account: Box<str>,
}

/// Why a string is not a SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    NotSpiffe(String),
    #[error(
        "identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    BadShape(String),
    #[error("identity {0:?} has an empty {1}")]
    Empty(String, &'static str),
    #[error("identity {0:?} has an invalid character in its {1}")]
    BadChar(String, &'static str),
}

// === impl Identity ===

impl Identity {
    /// Builds an identity from its parts, checking each the way [`FromStr`] does.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let whole = || format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_part(trust_domain, "trust domain", &whole)?;
        check_part(namespace, "namespace", &whole)?;
        check_part(service_account, "service account", &whole)?;
        Ok(Identity(Arc::new(Parts {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })))
    }

    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// The identity without its `spiffe://` scheme, as Istio's principal matches compare it.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.0.trust_domain, self.0.namespace, self.0.service_account
        )
    }
}

fn check_part(
    part: &str,
    what: &'static str,
    whole: &dyn Fn() -> String,
) -> Result<(), IdentityError> {
    if part.is_empty() {
        return Err(IdentityError::Empty(whole(), what));
    }
    // Path segments of a SPIFFE ID: no separators, no whitespace, no control characters.
    if part
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(IdentityError::BadChar(whole(), what));
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Identity::new(td, ns, sa).map_err(|e| match e {
                IdentityError::Empty(_, what) => IdentityError::Empty(s.to_string(), what),
                IdentityError::BadChar(_, what) => IdentityError::BadChar(s.to_string(), what),
                other => other,
            }),
            _ => Err(IdentityError::BadShape(s.to_string())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.0.trust_domain, self.0.namespace, self.0.service_account
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            id.principal(),
            "cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }

    #[test]
    fn rejects_other_schemes() {
        assert_eq!(
            "https://cluster.local/ns/a/sa/b".parse::<Identity>(),
            Err(IdentityError::NotSpiffe(
                "https://cluster.local/ns/a/sa/b".into()
            ))
        );
    }

    #[test]
    fn rejects_wrong_shapes() {
        for s in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/b/",
        ] {
            assert_eq!(
                s.parse::<Identity>(),
                Err(IdentityError::BadShape(s.into())),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_empty_and_bad_parts() {
        assert_eq!(
            "spiffe:///ns/a/sa/b".parse::<Identity>(),
            Err(IdentityError::Empty(
                "spiffe:///ns/a/sa/b".into(),
                "trust domain"
            ))
        );
        assert_eq!(
            "spiffe://td/ns//sa/b".parse::<Identity>(),
            Err(IdentityError::Empty(
                "spiffe://td/ns//sa/b".into(),
                "namespace"
            ))
        );
        assert_eq!(
            "spiffe://td/ns/a/sa/b c".parse::<Identity>(),
            Err(IdentityError::BadChar(
                "spiffe://td/ns/a/sa/b c".into(),
                "service account"
            ))
        );
        assert!(Identity::new("td", "a/b", "c").is_err());
    }
}
