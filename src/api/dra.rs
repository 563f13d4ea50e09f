//! `spec.draResources`: devices through Dynamic Resource Allocation, in NIM's shape
//! (`DRAResource`): an existing ResourceClaim, a ResourceClaimTemplate, or a device request the
//! operator turns into a `resource.k8s.io/v1` ResourceClaimTemplate it owns.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::QUANTITY_RULE;

/// One claim the engine container gets: exactly one of `resourceClaimName`,
/// `resourceClaimTemplateName` or `claimCreationSpec`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.resourceClaimName) ? 1 : 0) + (has(self.resourceClaimTemplateName) ? 1 : 0) + (has(self.claimCreationSpec) ? 1 : 0) == 1")
    .message("spec.draResources[]: set exactly one of resourceClaimName (an existing ResourceClaim), resourceClaimTemplateName (an existing ResourceClaimTemplate) or claimCreationSpec (the operator creates the template); remove the others"))]
#[serde(rename_all = "camelCase")]
pub struct DraResource {
    /// An existing ResourceClaim in the service's namespace, shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub resource_claim_name: Option<String>,
    /// An existing ResourceClaimTemplate in the service's namespace: each pod gets its own claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub resource_claim_template_name: Option<String>,
    /// Devices to request: the operator renders a ResourceClaimTemplate from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_creation_spec: Option<DraClaimCreationSpec>,
    /// The requests of the claim the engine container uses; empty = all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub requests: Option<Vec<String>>,
}

/// A ResourceClaimTemplate the operator creates, owns and prunes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraClaimCreationSpec {
    /// Name part of the template, `<service>-<generateName>-<index>`; default `dra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub generate_name: Option<String>,
    /// One request per entry.
    #[schemars(length(min = 1, max = 8))]
    pub devices: Vec<DraDeviceSpec>,
}

/// One device request of a generated claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.celExpressions) || (!has(self.attributeSelectors) && !has(self.capacitySelectors))")
    .message("spec.draResources[].claimCreationSpec.devices[]: celExpressions cannot be combined with attributeSelectors or capacitySelectors; write the whole condition as CEL, or use the selectors only"))]
#[serde(rename_all = "camelCase")]
pub struct DraDeviceSpec {
    /// Request name inside the claim (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Devices to allocate per pod. Unset: the selected profile's device count per pod (tensor x
    /// pipeline over its nodes); set: only profiles using exactly this many devices per pod are
    /// considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64")
        .message("spec.draResources[].claimCreationSpec.devices[].count must be between 1 and 64; leave it unset to request the selected profile's device count"))]
    pub count: Option<i64>,
    /// DeviceClass to allocate from. Default: the DRA driver publishing the selected devices
    /// (DRA drivers install a DeviceClass named after themselves, e.g. `gpu.nvidia.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub device_class_name: Option<String>,
    /// Driver whose attributes unqualified selector keys name. Default: as `deviceClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub driver_name: Option<String>,
    /// Conditions on device attributes, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub attribute_selectors: Option<Vec<DraDeviceAttributeSelector>>,
    /// Conditions on device capacities, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12))]
    pub capacity_selectors: Option<Vec<DraResourceQuantitySelector>>,
    /// CEL selectors as DRA evaluates them (`device.attributes[...]`), ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 2048)))]
    pub cel_expressions: Option<Vec<String>>,
}

/// `key op value` on a device attribute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraDeviceAttributeSelector {
    /// Attribute, qualified (`gpu.nvidia.com/productName`) or short (`productName`, qualified by
    /// the driver).
    #[schemars(length(min = 1, max = 64))]
    pub key: String,
    /// Comparison (default Equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<DraAttributeOp>,
    /// Value to compare with.
    pub value: DraAttributeValue,
}

/// Comparison of an attribute selector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum DraAttributeOp {
    /// ==
    Equal,
    /// !=
    NotEqual,
    /// >
    GreaterThan,
    /// >=
    GreaterThanOrEqual,
    /// <
    LessThan,
    /// <=
    LessThanOrEqual,
}

/// An attribute value: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.boolValue) ? 1 : 0) + (has(self.intValue) ? 1 : 0) + (has(self.stringValue) ? 1 : 0) + (has(self.versionValue) ? 1 : 0) == 1")
    .message("spec.draResources[].claimCreationSpec.devices[].attributeSelectors[].value: set exactly one of boolValue, intValue, stringValue or versionValue"))]
#[serde(rename_all = "camelCase")]
pub struct DraAttributeValue {
    /// true / false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool_value: Option<bool>,
    /// A number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int_value: Option<i64>,
    /// A string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub string_value: Option<String>,
    /// A semantic version (semver 2.0.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version_value: Option<String>,
}

/// `key == quantity` on a device capacity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraResourceQuantitySelector {
    /// Capacity, qualified (`gpu.nvidia.com/memory`) or short (`memory`).
    #[schemars(length(min = 1, max = 64))]
    pub key: String,
    /// Comparison (only Equal, as NIM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<DraQuantityOp>,
    /// A quantity such as `80Gi`.
    #[x_kube(validation = Rule::new(QUANTITY_RULE)
        .message("spec.draResources[].claimCreationSpec.devices[].capacitySelectors[].value must be a quantity such as 80Gi"))]
    #[schemars(length(min = 1, max = 32))]
    pub value: String,
}

/// Comparison of a capacity selector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum DraQuantityOp {
    /// ==
    Equal,
}

/// The devices per replica the operator's generated claims request, when every device request
/// of every `claimCreationSpec` sets `count`; None when one leaves it to the profile, or when
/// every claim is the user's own (its size is not read).
pub fn requested_count(resources: &[DraResource]) -> Option<u32> {
    let devices: Vec<&DraDeviceSpec> =
        resources.iter().filter_map(|r| r.claim_creation_spec.as_ref()).flat_map(|c| &c.devices).collect();
    if devices.is_empty() {
        return None;
    }
    devices.iter().try_fold(0u32, |sum, d| sum.checked_add(u32::try_from(d.count?).ok()?))
}
