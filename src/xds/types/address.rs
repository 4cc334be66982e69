//! `istio.workload.Address`: a workload or a service, named by workload uid or service key.

use std::sync::Arc;

use ambit_proto::istio::workload as pw;
use prost::Message;

use super::{XdsType, undecodable};
use crate::state::{Resource, ResourceKey, Service, Workload};
use crate::xds::convert::{ConvertError, Problem};

pub(super) const ADDRESSES: XdsType = XdsType {
    type_url: ambit_proto::ADDRESS_TYPE_URL,
    decode,
    // The name does not say whether it was a workload or a service: the state removes
    // whichever exists.
    unseen_removal: ResourceKey::Address,
};

fn decode(name: &str, body: &[u8]) -> Result<Resource, ConvertError> {
    let address = pw::Address::decode(body).map_err(|e| undecodable(name, e))?;
    match address.r#type {
        Some(pw::address::Type::Workload(w)) => {
            Ok(Resource::Workload(Arc::new(Workload::try_from(w)?)))
        }
        Some(pw::address::Type::Service(s)) => {
            Ok(Resource::Service(Arc::new(Service::try_from(s)?)))
        }
        None => Err(ConvertError {
            resource: format!("address {name:?}"),
            field: "type".into(),
            problem: Problem::Missing,
        }),
    }
}
