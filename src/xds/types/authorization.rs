//! `istio.security.Authorization`: an L4 authorization policy, named `namespace/name`.

use std::sync::Arc;

use ambit_proto::istio::security as ps;
use prost::Message;

use super::{XdsType, undecodable};
use crate::rbac::Authorization;
use crate::state::{Resource, ResourceKey};
use crate::xds::convert::ConvertError;

pub(super) const AUTHORIZATIONS: XdsType = XdsType {
    type_url: ambit_proto::AUTHORIZATION_TYPE_URL,
    decode,
    unseen_removal: ResourceKey::Policy,
};

fn decode(name: &str, body: &[u8]) -> Result<Resource, ConvertError> {
    let policy = ps::Authorization::decode(body).map_err(|e| undecodable(name, e))?;
    Ok(Resource::Policy(Arc::new(Authorization::try_from(policy)?)))
}
