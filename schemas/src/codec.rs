//! The wire format of every pipeline topic: Avro single-object encoding.
//!
//! A record is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer
//! schema's canonical form, then the Avro binary body. Readers look the fingerprint up among all
//! schema versions ever published for that record and resolve old writer schemas to the current
//! one, so records written before an (always backward-compatible) schema change still decode.
//! Any Avro library can read the topics with the `.avsc` files alone.

use crate::{
    AuditRule, DeadLetter, DirectoryRecord, EnrichedAuditEvent, RawAuditEvent, StreamMapping,
};
use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use std::fmt;
use std::sync::OnceLock;

pub mod direct;
pub mod direct_write;

/// The two marker bytes that open every single-object encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint.
pub const HEADER_LEN: usize = 10;
/// Largest length-prefixed allocation a body may ask for; a hostile length prefix fails cleanly
/// instead of allocating gigabytes. Kafka records are far smaller than this.
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// An 8-byte schema fingerprint, shown as hex in errors and tools.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One published version of a record's schema.
pub struct SchemaVersion {
    pub version: u32,
    pub fingerprint: Fingerprint,
    pub schema: Schema,
    pub text: &'static str,
}

/// All versions of one record's schema; the last is the one written.
pub struct SchemaVersions {
    pub record: &'static str,
    versions: Vec<SchemaVersion>,
}

impl SchemaVersions {
    /// Parses the compiled-in schema texts. They are part of this crate and covered by its
    /// tests, so a parse failure is a build defect, not bad input.
    pub(crate) fn parse(record: &'static str, texts: &[&'static str]) -> Self {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let versions = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let schema = Schema::parse_str(text).unwrap_or_else(|e| {
                    panic!("compiled-in schema {record} v{} is invalid: {e}", i + 1)
                });
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&schema.fingerprint::<Rabin>().bytes[..8]);
                SchemaVersion {
                    version: (i + 1) as u32,
                    fingerprint: Fingerprint(fp),
                    schema,
                    text,
                }
            })
            .collect();
        Self { record, versions }
    }

    pub fn current(&self) -> &SchemaVersion {
        // `parse` is only ever called with a non-empty list (see `avro_record!`).
        &self.versions[self.versions.len() - 1]
    }

    pub fn all(&self) -> &[SchemaVersion] {
        &self.versions
    }

    pub fn find(&self, fingerprint: Fingerprint) -> Option<&SchemaVersion> {
        self.versions.iter().find(|v| v.fingerprint == fingerprint)
    }
}

/// A record type that travels on a topic as single-object encoded Avro.
pub trait AvroRecord: Serialize + DeserializeOwned + Sized {
    fn schemas() -> &'static SchemaVersions;

    /// Encodes with the current schema version.
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(256);
        self.encode_into(&mut buf)?;
        Ok(buf)
    }

    /// Appends the encoding to `buf`, so hot paths can reuse one buffer.
    fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        Self::schemas().encode_into(self, buf)
    }

    /// Decodes a record written with any known version of this record's schema.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if let Ok((fingerprint, body)) = split_header(bytes) {
            if fingerprint == Self::schemas().current().fingerprint {
                if let Some(decoded) = Self::decode_current(body) {
                    return decoded;
                }
            }
        }
        Self::schemas().decode(bytes)
    }

    /// A faster decoder for bodies of the current schema version, where one exists.
    fn decode_current(_body: &[u8]) -> Option<Result<Self, DecodeError>> {
        None
    }
}

impl SchemaVersions {
    pub fn encode_into<T: Serialize>(
        &self,
        record: &T,
        buf: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let current = self.current();
        let start = buf.len();
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&current.fingerprint.0);
        apache_avro::write_avro_datum_ref(&current.schema, record, buf).map_err(|source| {
            buf.truncate(start);
            EncodeError {
                record: self.record,
                source,
            }
        })?;
        Ok(())
    }

    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let (fingerprint, body) = split_header(bytes)?;
        let writer = self
            .find(fingerprint)
            .ok_or(DecodeError::UnknownFingerprint {
                record: self.record,
                fingerprint,
            })?;
        let current = self.current();
        let reader_schema = (writer.version != current.version).then_some(&current.schema);
        let mut body = StrictReader(body);
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, reader_schema)
            .map_err(|source| DecodeError::Body {
                record: self.record,
                source: Box::new(source),
            })?;
        if !body.0.is_empty() {
            return Err(DecodeError::TrailingBytes {
                record: self.record,
                count: body.0.len(),
            });
        }
        apache_avro::from_value(&value).map_err(|source| DecodeError::Invalid {
            record: self.record,
            source: Box::new(source),
        })
    }
}

/// A byte slice whose end is an error, not an EOF.
///
/// apache-avro decodes a union whose index byte is missing at end of input as `null`, so a
/// truncated record would silently decode with its last fields emptied. Reporting the end as
/// `InvalidData` defeats that and makes every truncation an error.
struct StrictReader<'a>(&'a [u8]);

impl std::io::Read for StrictReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.0.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "record ends before its last field",
            ));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Checks the marker and returns the fingerprint and the body.
pub fn split_header(bytes: &[u8]) -> Result<(Fingerprint, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok((Fingerprint(fp), &bytes[HEADER_LEN..]))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode {record} as Avro: {source}")]
pub struct EncodeError {
    pub record: &'static str,
    #[source]
    pub source: apache_avro::Error,
}

/// Why bytes are not a record; every variant names what was expected so a dead letter's reason
/// is enough to diagnose the producer at fault.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {len} bytes, shorter than the 10-byte Avro single-object header")]
    TooShort { len: usize },
    #[error("record does not start with the Avro single-object marker C3 01 (found {:02X} {:02X})", found[0], found[1])]
    BadMagic { found: [u8; 2] },
    #[error("schema fingerprint {fingerprint} is not a known {record} schema version")]
    UnknownFingerprint {
        record: &'static str,
        fingerprint: Fingerprint,
    },
    #[error("schema fingerprint {fingerprint} belongs to no schema of this pipeline")]
    UnknownSchema { fingerprint: Fingerprint },
    #[error("undecodable {record} body: {source}")]
    Body {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("undecodable {record} body: {source}")]
    Direct {
        record: &'static str,
        #[source]
        source: direct::DirectError,
    },
    #[error("{record} body has {count} unexpected trailing bytes")]
    TrailingBytes { record: &'static str, count: usize },
    #[error("{record} decoded but is not valid: {source}")]
    Invalid {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

macro_rules! avro_record {
    (@schemas $name:literal, [$($file:literal),+]) => {
        fn schemas() -> &'static SchemaVersions {
            static VERSIONS: OnceLock<SchemaVersions> = OnceLock::new();
            VERSIONS.get_or_init(|| {
                SchemaVersions::parse($name, &[$(include_str!(concat!("../avro/", $file))),+])
            })
        }
    };
    ($ty:ty, $name:literal, [$($file:literal),+ $(,)?]) => {
        impl AvroRecord for $ty {
            avro_record!(@schemas $name, [$($file),+]);
        }
    };
    ($ty:ty, $name:literal, [$($file:literal),+ $(,)?], $direct:path) => {
        impl AvroRecord for $ty {
            avro_record!(@schemas $name, [$($file),+]);

            fn decode_current(body: &[u8]) -> Option<Result<Self, DecodeError>> {
                Some($direct(body).map_err(|e| DecodeError::Direct { record: $name, source: e }))
            }
        }
    };
    ($ty:ty, $name:literal, [$($file:literal),+ $(,)?], $decode:path, encode = $encode:path) => {
        impl AvroRecord for $ty {
            avro_record!(@schemas $name, [$($file),+]);

            fn decode_current(body: &[u8]) -> Option<Result<Self, DecodeError>> {
                Some($decode(body).map_err(|e| DecodeError::Direct { record: $name, source: e }))
            }

            fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
                buf.extend_from_slice(&MAGIC);
                buf.extend_from_slice(&Self::schemas().current().fingerprint.0);
                $encode(self, buf);
                Ok(())
            }
        }
    };
    ($ty:ty, $name:literal, [$($file:literal),+ $(,)?], encode = $direct:path) => {
        impl AvroRecord for $ty {
            avro_record!(@schemas $name, [$($file),+]);

            fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
                buf.extend_from_slice(&MAGIC);
                buf.extend_from_slice(&Self::schemas().current().fingerprint.0);
                $direct(self, buf);
                Ok(())
            }
        }
    };
}

avro_record!(
    RawAuditEvent,
    "RawAuditEvent",
    [
        "raw_audit_event.v1.avsc",
        "raw_audit_event.v2.avsc",
        "raw_audit_event.v3.avsc"
    ],
    direct::raw_audit_event,
    encode = direct_write::raw_audit_event
);
avro_record!(
    EnrichedAuditEvent,
    "EnrichedAuditEvent",
    [
        "enriched_audit_event.v1.avsc",
        "enriched_audit_event.v2.avsc",
        "enriched_audit_event.v3.avsc",
        "enriched_audit_event.v4.avsc",
        "enriched_audit_event.v5.avsc",
        "enriched_audit_event.v6.avsc"
    ],
    encode = direct_write::enriched_audit_event
);
avro_record!(
    DirectoryRecord,
    "DirectoryRecord",
    ["directory_record.v1.avsc", "directory_record.v2.avsc"]
);
avro_record!(AuditRule, "AuditRule", ["audit_rule.v1.avsc"]);
avro_record!(StreamMapping, "StreamMapping", ["stream_mapping.v1.avsc"]);
avro_record!(
    DeadLetter,
    "DeadLetter",
    ["dead_letter.v1.avsc", "dead_letter.v2.avsc"]
);

/// Any record of the pipeline, recognised by its fingerprint alone; what operator tools use to
/// read a topic without being told its record type.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyRecord {
    Raw(Box<RawAuditEvent>),
    Enriched(Box<EnrichedAuditEvent>),
    Directory(DirectoryRecord),
    Rule(AuditRule),
    StreamMapping(StreamMapping),
    DeadLetter(DeadLetter),
}

impl AnyRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (fingerprint, _) = split_header(bytes)?;
        let is = |v: &SchemaVersions| v.find(fingerprint).is_some();
        if is(RawAuditEvent::schemas()) {
            RawAuditEvent::decode(bytes).map(|e| Self::Raw(Box::new(e)))
        } else if is(EnrichedAuditEvent::schemas()) {
            EnrichedAuditEvent::decode(bytes).map(|e| Self::Enriched(Box::new(e)))
        } else if is(DirectoryRecord::schemas()) {
            DirectoryRecord::decode(bytes).map(Self::Directory)
        } else if is(AuditRule::schemas()) {
            AuditRule::decode(bytes).map(Self::Rule)
        } else if is(StreamMapping::schemas()) {
            StreamMapping::decode(bytes).map(Self::StreamMapping)
        } else if is(DeadLetter::schemas()) {
            DeadLetter::decode(bytes).map(Self::DeadLetter)
        } else {
            Err(DecodeError::UnknownSchema { fingerprint })
        }
    }

    pub fn record_name(&self) -> &'static str {
        match self {
            AnyRecord::Raw(_) => "RawAuditEvent",
            AnyRecord::Enriched(_) => "EnrichedAuditEvent",
            AnyRecord::Directory(_) => "DirectoryRecord",
            AnyRecord::Rule(_) => "AuditRule",
            AnyRecord::StreamMapping(_) => "StreamMapping",
            AnyRecord::DeadLetter(_) => "DeadLetter",
        }
    }
}

impl Serialize for AnyRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AnyRecord::Raw(r) => r.serialize(s),
            AnyRecord::Enriched(r) => r.serialize(s),
            AnyRecord::Directory(r) => r.serialize(s),
            AnyRecord::Rule(r) => r.serialize(s),
            AnyRecord::StreamMapping(r) => r.serialize(s),
            AnyRecord::DeadLetter(r) => r.serialize(s),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
