//! The CRI calls the agent makes (kubernetes/cri-api, `runtime.v1`): the
//! `RuntimeService/Version` preflight asks first, as the kubelet does, and
//! `ImageService/ListImages`, which shows the images as the kubelet sees them.

use std::io::{Read, Write};

use super::proto::{self, Message, Value};
use super::{unary_call, CallError};

/// A CRI `VersionResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriVersion {
    /// Version of the kubelet runtime API (field 1).
    pub version: String,
    /// Name of the container runtime (field 2).
    pub runtime_name: String,
    /// Version of the container runtime (field 3).
    pub runtime_version: String,
    /// API version of the container runtime (field 4).
    pub runtime_api_version: String,
}

impl CriVersion {
    /// Decodes the protobuf message.
    pub fn decode(buf: &[u8]) -> Result<Self, CallError> {
        let f = proto::fields(buf)?;
        Ok(Self {
            version: proto::string_field(&f, 1),
            runtime_name: proto::string_field(&f, 2),
            runtime_version: proto::string_field(&f, 3),
            runtime_api_version: proto::string_field(&f, 4),
        })
    }
}

/// The gRPC method kubelet calls first.
pub const VERSION_PATH: &str = "/runtime.v1.RuntimeService/Version";

/// Calls CRI `RuntimeService/Version` with `version = "v1"`.
pub fn cri_version<S: Read + Write>(conn: &mut S) -> Result<CriVersion, CallError> {
    let req = Message::new().string(1, "v1").into_bytes();
    CriVersion::decode(&unary_call(conn, VERSION_PATH, &[], &req)?)
}

/// The method that lists the images the runtime has for the kubelet.
pub const LIST_IMAGES_PATH: &str = "/runtime.v1.ImageService/ListImages";

/// One CRI `Image` (the fields the agent shows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriImage {
    /// The image ID, the config's digest (field 1).
    pub id: String,
    /// The names it is known by (field 2).
    pub repo_tags: Vec<String>,
    /// The digests it is known by (field 3).
    pub repo_digests: Vec<String>,
    /// Its size in bytes (field 4).
    pub size: u64,
}

impl CriImage {
    /// Decodes the protobuf message.
    pub fn decode(buf: &[u8]) -> Result<Self, CallError> {
        let f = proto::fields(buf)?;
        let strings = |number: u64| -> Vec<String> {
            f.iter()
                .filter_map(|(n, v)| match v {
                    Value::Bytes(b) if *n == number => {
                        Some(String::from_utf8_lossy(b).into_owned())
                    }
                    _ => None,
                })
                .collect()
        };
        Ok(Self {
            id: proto::string_field(&f, 1),
            repo_tags: strings(2),
            repo_digests: strings(3),
            size: proto::varint_field(&f, 4),
        })
    }
}

/// The images of a `ListImagesResponse` (field 1, repeated).
pub fn decode_list_images(buf: &[u8]) -> Result<Vec<CriImage>, CallError> {
    proto::fields(buf)?
        .into_iter()
        .filter_map(|(n, v)| match v {
            Value::Bytes(b) if n == 1 => Some(CriImage::decode(b)),
            _ => None,
        })
        .collect()
}

/// A `ListImagesRequest` without a filter: every image.
pub fn list_images_request() -> Vec<u8> {
    Vec::new()
}
