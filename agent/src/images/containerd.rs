//! The containerd API messages `kiln-agent images import` sends, and the calls, over
//! [`ImagesSys::grpc`]. Field numbers are containerd's (api/services/content/v1,
//! images/v1, leases/v1 and api/types/descriptor.proto), the same in 1.7 and 2.x; every
//! call carries the namespace in the `containerd-namespace` metadata, and, once a lease
//! exists, the lease in `containerd-lease`.

use super::archive::Descriptor;
use super::ImagesSys;
use crate::grpc::proto::{self, Message};
use crate::grpc::CallError;

/// Content `Write` (a bidirectional stream; one request is all this client sends).
pub const WRITE_PATH: &str = "/containerd.services.content.v1.Content/Write";
/// Content `Update` (a blob's labels).
pub const UPDATE_CONTENT_PATH: &str = "/containerd.services.content.v1.Content/Update";
/// Content `Abort` (an ingest that went wrong).
pub const ABORT_PATH: &str = "/containerd.services.content.v1.Content/Abort";
/// Images `Create`.
pub const CREATE_IMAGE_PATH: &str = "/containerd.services.images.v1.Images/Create";
/// Images `Update`.
pub const UPDATE_IMAGE_PATH: &str = "/containerd.services.images.v1.Images/Update";
/// Leases `Create`.
pub const CREATE_LEASE_PATH: &str = "/containerd.services.leases.v1.Leases/Create";
/// Leases `Delete`.
pub const DELETE_LEASE_PATH: &str = "/containerd.services.leases.v1.Leases/Delete";

/// The metadata header naming the namespace (containerd's namespaces.GRPCHeader).
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The metadata header naming the lease (containerd's leases.GRPCHeader).
pub const LEASE_HEADER: &str = "containerd-lease";
/// The lease label after which the garbage collector may remove the lease (RFC 3339).
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
/// The GC label from a manifest to its config (containerd's images.ChildGCLabels).
pub const LABEL_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// The GC label prefix from a manifest to its layers, numbered from 0.
pub const LABEL_LAYER: &str = "containerd.io/gc.ref.content.l.";

/// gRPC status ALREADY_EXISTS.
pub const ALREADY_EXISTS: u32 = 6;
/// gRPC status OUT_OF_RANGE.
pub const OUT_OF_RANGE: u32 = 11;

/// `WriteAction.COMMIT`.
pub const ACTION_COMMIT: u64 = 2;

/// A containerd call that failed: which one, and why.
#[derive(Debug)]
pub struct Failed {
    /// What was being done (`committing sha256:...`).
    pub what: String,
    /// The error.
    pub source: CallError,
}

/// A `WriteContentRequest` that commits `blob` under `reference` without data: `total`
/// and `expected` name the blob, and `offset` is its size, where containerd's shared
/// writer stands for a blob its content store already has (see [`commit_shared`]).
pub fn commit_request(reference: &str, blob: &Descriptor) -> Vec<u8> {
    Message::new()
        .varint(1, ACTION_COMMIT)
        .string(2, reference)
        .varint(3, blob.size)
        .string(4, &blob.digest)
        .varint(5, blob.size)
        .into_bytes()
}

/// A `WriteContentResponse` (the fields this client checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResponse {
    /// Field 1.
    pub action: u64,
    /// Field 4: the committed size.
    pub offset: u64,
    /// Field 6.
    pub digest: String,
}

impl WriteResponse {
    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<WriteResponse, CallError> {
        let f = proto::fields(buf)?;
        Ok(WriteResponse {
            action: proto::varint_field(&f, 1),
            offset: proto::varint_field(&f, 4),
            digest: proto::string_field(&f, 6),
        })
    }
}

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The blob is now in the namespace.
    Committed,
    /// It was there already (from an earlier boot).
    AlreadyThere,
    /// containerd opened a writer for new data instead of taking the blob from its
    /// content store: the blob is not there (any more), or the content sharing policy is
    /// "isolated".
    NotShared,
}

/// An `UpdateRequest` that sets `labels` on the blob `digest` and only those (the mask
/// names each `labels.<key>`, so other labels stay).
pub fn labels_request(digest: &str, labels: &[(String, String)]) -> Vec<u8> {
    let info = Message::new()
        .string(1, digest)
        .map(5, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut mask = Message::new();
    for (k, _) in labels {
        mask = mask.repeated_string(1, &format!("labels.{k}"));
    }
    Message::new()
        .message(1, &info)
        .message(2, &mask)
        .into_bytes()
}

/// The GC labels of a manifest: its config and each layer, as containerd's
/// images.SetChildrenLabels sets them on import and pull.
pub fn manifest_labels(config: &Descriptor, layers: &[Descriptor]) -> Vec<(String, String)> {
    let mut labels = vec![(LABEL_CONFIG.to_string(), config.digest.clone())];
    for (i, l) in layers.iter().enumerate() {
        labels.push((format!("{LABEL_LAYER}{i}"), l.digest.clone()));
    }
    labels
}

/// A `containerd.types.Descriptor`: what `ctr images import` stores as the target (the
/// index entry: media type, digest, size and annotations; the platform has no field).
fn descriptor(d: &Descriptor) -> Message {
    Message::new()
        .string(1, &d.media_type)
        .string(2, &d.digest)
        .varint(3, d.size)
        .map(
            5,
            d.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
}

/// An `Image` named `name` with `target`.
fn image(name: &str, target: &Descriptor) -> Message {
    Message::new()
        .string(1, name)
        .message(3, &descriptor(target))
}

/// A `CreateImageRequest`.
pub fn create_image_request(name: &str, target: &Descriptor) -> Vec<u8> {
    Message::new().message(1, &image(name, target)).into_bytes()
}

/// An `UpdateImageRequest` that points the image at `target` and changes nothing else.
pub fn update_image_request(name: &str, target: &Descriptor) -> Vec<u8> {
    Message::new()
        .message(1, &image(name, target))
        .message(2, &Message::new().repeated_string(1, "target"))
        .into_bytes()
}

/// A Leases `CreateRequest` without an ID (the server makes one up) and with an
/// expiry label, so a lease an interrupted import leaves behind goes away by itself.
pub fn create_lease_request(expires: &str) -> Vec<u8> {
    Message::new()
        .map(3, [(LABEL_EXPIRE, expires)])
        .into_bytes()
}

/// The lease ID of a Leases `CreateResponse` (`lease` 1, its `id` 1).
pub fn lease_id(buf: &[u8]) -> Result<String, CallError> {
    let f = proto::fields(buf)?;
    let lease = proto::bytes_field(&f, 1)
        .ok_or_else(|| CallError::BadMessage("CreateResponse without a lease".into()))?;
    let id = proto::string_field(&proto::fields(lease)?, 1);
    if id.is_empty() {
        return Err(CallError::BadMessage("the lease has no id".into()));
    }
    Ok(id)
}

/// A Leases `DeleteRequest` (asynchronous: the GC runs when it runs).
pub fn delete_lease_request(id: &str) -> Vec<u8> {
    Message::new().string(1, id).into_bytes()
}

/// A Content `AbortRequest`.
pub fn abort_request(reference: &str) -> Vec<u8> {
    Message::new().string(1, reference).into_bytes()
}

/// The calls, on one socket and namespace, under a lease once [`Session::lease`] made one.
pub struct Session<'a> {
    sys: &'a mut dyn ImagesSys,
    socket: &'a str,
    namespace: &'a str,
    lease: Option<String>,
}

impl<'a> Session<'a> {
    /// Calls on `socket` in `namespace`.
    pub fn new(sys: &'a mut dyn ImagesSys, socket: &'a str, namespace: &'a str) -> Self {
        Session {
            sys,
            socket,
            namespace,
            lease: None,
        }
    }

    /// The system, for what is not a call.
    pub fn sys(&mut self) -> &mut dyn ImagesSys {
        self.sys
    }

    /// containerd's socket.
    pub fn socket(&self) -> &str {
        self.socket
    }

    fn call(&mut self, path: &str, request: &[u8]) -> Result<Vec<Vec<u8>>, CallError> {
        let mut metadata = vec![(NAMESPACE_HEADER, self.namespace)];
        if let Some(l) = &self.lease {
            metadata.push((LEASE_HEADER, l.as_str()));
        }
        self.sys.grpc(self.socket, path, &metadata, request)
    }

    fn unary(&mut self, path: &str, request: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut messages = self.call(path, request)?;
        match messages.len() {
            1 => Ok(messages.remove(0)),
            n => Err(CallError::MessageCount(n)),
        }
    }

    /// Creates a lease that expires at `expires` (RFC 3339); the later calls run under
    /// it, so what they add to the namespace is safe from the garbage collector until
    /// the image refers to it.
    pub fn lease(&mut self, expires: &str) -> Result<(), Failed> {
        let id = self
            .unary(CREATE_LEASE_PATH, &create_lease_request(expires))
            .and_then(|m| lease_id(&m))
            .map_err(|source| Failed {
                what: "creating a lease".into(),
                source,
            })?;
        self.lease = Some(id);
        Ok(())
    }

    /// Deletes the lease, if there is one: what the image refers to stays, the rest
    /// becomes garbage.
    pub fn release(&mut self) -> Result<(), Failed> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        self.call(DELETE_LEASE_PATH, &delete_lease_request(&id))
            .map(drop)
            .map_err(|source| Failed {
                what: format!("deleting lease {id}"),
                source,
            })
    }

    /// Commits `blob`, which is in containerd's content store folder already, into the
    /// namespace without sending its bytes.
    ///
    /// containerd's metadata store, with the default "shared" content sharing policy,
    /// opens a writer with nothing to write when the blob the request expects is in its
    /// content store with the expected size; its status stands at the blob's size, so a
    /// COMMIT at that offset with no data puts the blob into the namespace. Answers:
    /// the commit's response (twice: containerd's Write sends its last message again
    /// when the stream ends), or ALREADY_EXISTS when the namespace has it already.
    /// Without a shared writer (the blob is gone, the policy is "isolated") the new
    /// writer stands at 0 and the offset is refused with OUT_OF_RANGE; the ingest that
    /// leaves is aborted.
    pub fn commit_shared(&mut self, blob: &Descriptor) -> Result<Commit, Failed> {
        let reference = format!("kiln-images-{}", blob.digest);
        let what = format!("committing {} ({} bytes)", blob.digest, blob.size);
        match self.call(WRITE_PATH, &commit_request(&reference, blob)) {
            Ok(messages) => {
                let last = messages.last().ok_or_else(|| Failed {
                    what: what.clone(),
                    source: CallError::MessageCount(0),
                })?;
                let r = WriteResponse::decode(last).map_err(|source| Failed {
                    what: what.clone(),
                    source,
                })?;
                if r.action != ACTION_COMMIT || r.offset != blob.size || r.digest != blob.digest {
                    return Err(Failed {
                        what,
                        source: CallError::BadMessage(format!(
                            "the commit answered action {}, offset {}, digest {:?}",
                            r.action, r.offset, r.digest
                        )),
                    });
                }
                Ok(Commit::Committed)
            }
            Err(CallError::Grpc {
                code: ALREADY_EXISTS,
                ..
            }) => Ok(Commit::AlreadyThere),
            Err(CallError::Grpc {
                code: OUT_OF_RANGE, ..
            }) => {
                // Best effort: the ingest would otherwise wait for its expiry.
                let _ = self.call(ABORT_PATH, &abort_request(&reference));
                Ok(Commit::NotShared)
            }
            Err(source) => Err(Failed { what, source }),
        }
    }

    /// Sets `labels` on the blob `digest` in the namespace.
    pub fn set_labels(&mut self, digest: &str, labels: &[(String, String)]) -> Result<(), Failed> {
        self.unary(UPDATE_CONTENT_PATH, &labels_request(digest, labels))
            .map(drop)
            .map_err(|source| Failed {
                what: format!("labelling {digest}"),
                source,
            })
    }

    /// Creates the image `name` with `target`, or, when it exists (an earlier boot, or an
    /// older archive), points it at `target`.
    pub fn put_image(&mut self, name: &str, target: &Descriptor) -> Result<(), Failed> {
        match self.unary(CREATE_IMAGE_PATH, &create_image_request(name, target)) {
            Ok(_) => Ok(()),
            Err(CallError::Grpc {
                code: ALREADY_EXISTS,
                ..
            }) => self
                .unary(UPDATE_IMAGE_PATH, &update_image_request(name, target))
                .map(drop)
                .map_err(|source| Failed {
                    what: format!("updating image {name}"),
                    source,
                }),
            Err(source) => Err(Failed {
                what: format!("creating image {name}"),
                source,
            }),
        }
    }
}
