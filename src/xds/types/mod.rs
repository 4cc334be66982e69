//! One handler per delta-xDS resource type the client subscribes to. A handler knows its type
//! URL, how to decode and convert a resource body, and what a removal of a name the client never
//! accepted refers to in the state (delta xDS may remove names this client has not seen, e.g.
//! after a reconnect). Adding a type is one file here plus a line in [`REGISTERED`]; the client
//! subscribes to, acknowledges and gates readiness on every registered type alike.

mod address;
mod authorization;

use super::convert::{ConvertError, Problem};
use crate::state::{Resource, ResourceKey};

/// A resource type of the delta ADS stream.
pub struct XdsType {
    /// The type URL subscribed to (as a wildcard) and matched against responses.
    pub type_url: &'static str,
    decode: fn(&str, &[u8]) -> Result<Resource, ConvertError>,
    unseen_removal: fn(String) -> ResourceKey,
}

impl XdsType {
    /// Decodes one resource body and converts it to the state's domain type. `name` is the xDS
    /// resource name, used in errors when the body itself cannot be read.
    pub fn decode(&self, name: &str, body: &[u8]) -> Result<Resource, ConvertError> {
        (self.decode)(name, body)
    }

    /// The state key a removal of `name` refers to when this client never accepted that name.
    pub fn unseen_removal(&self, name: String) -> ResourceKey {
        (self.unseen_removal)(name)
    }
}

/// Every type the client subscribes to, in the order of the initial requests.
pub const REGISTERED: &[XdsType] = &[address::ADDRESSES, authorization::AUTHORIZATIONS];

/// The registered handler of `type_url`.
pub fn find(type_url: &str) -> Option<&'static XdsType> {
    REGISTERED.iter().find(|t| t.type_url == type_url)
}

/// Decodes one delta-xDS resource body of `type_url` and converts it.
pub fn decode_resource(type_url: &str, name: &str, body: &[u8]) -> Result<Resource, ConvertError> {
    match find(type_url) {
        Some(t) => t.decode(name, body),
        None => Err(ConvertError {
            resource: format!("resource {name:?}"),
            field: String::new(),
            problem: Problem::WrongType {
                got: type_url.to_string(),
                want: "a known type URL",
            },
        }),
    }
}

/// A body that is not valid protobuf.
fn undecodable(name: &str, e: prost::DecodeError) -> ConvertError {
    ConvertError {
        resource: format!("resource {name:?}"),
        field: String::new(),
        problem: Problem::Decode(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
