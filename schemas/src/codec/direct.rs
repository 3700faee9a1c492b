//! A direct decoder for the current `RawAuditEvent` schema: Avro binary straight into the Rust
//! type, without apache-avro's intermediate `Value` tree (which allocates every field twice).
//! It is the enricher's hot path. Only the current version is decoded here; older versions go
//! through the generic resolving decoder. The property test in `codec::tests` checks that both
//! decoders agree on arbitrary events.

use crate::{
    ClientInfo, Credential, EntityRef, EntityRole, ErrorInfo, EventType, IngestContext,
    RawAuditEvent, Source, Timestamp,
};
use std::collections::BTreeMap;

/// Why the body is not a current-version `RawAuditEvent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct DirectError {
    pub what: String,
    pub at: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn fail<T>(&self, what: impl Into<String>) -> Result<T, DirectError> {
        Err(DirectError {
            what: what.into(),
            at: self.at,
        })
    }

    fn long(&mut self) -> Result<i64, DirectError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else {
                return self.fail("record ends inside a number");
            };
            self.at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        self.fail("number longer than 10 bytes")
    }

    fn int(&mut self) -> Result<i32, DirectError> {
        let v = self.long()?;
        i32::try_from(v).or_else(|_| self.fail("int out of range"))
    }

    fn len(&mut self) -> Result<usize, DirectError> {
        let n = self.long()?;
        if n < 0 || n as usize > self.bytes.len() - self.at {
            return self.fail(format!("length {n} exceeds the record"));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, DirectError> {
        let n = self.len()?;
        let raw = &self.bytes[self.at..self.at + n];
        let s =
            std::str::from_utf8(raw).or_else(|e| self.fail(format!("string is not UTF-8: {e}")))?;
        self.at += n;
        Ok(s.to_string())
    }

    fn boolean(&mut self) -> Result<bool, DirectError> {
        match self.bytes.get(self.at) {
            Some(0) => {
                self.at += 1;
                Ok(false)
            }
            Some(1) => {
                self.at += 1;
                Ok(true)
            }
            _ => self.fail("not a boolean"),
        }
    }

    /// `["null", T]`: branch 0 is null, 1 is the value.
    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DirectError>,
    ) -> Result<Option<T>, DirectError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            b => self.fail(format!("union branch {b} of [null, ...]")),
        }
    }

    fn opt_string(&mut self) -> Result<Option<String>, DirectError> {
        self.optional(Self::string)
    }

    /// Avro arrays and maps come in blocks; a negative count is followed by the block's size.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DirectError>,
    ) -> Result<(), DirectError> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count
                    .checked_neg()
                    .map_or_else(|| self.fail("bad block count"), Ok)?;
                self.long()?;
            }
            if count as usize > self.bytes.len() - self.at {
                return self.fail(format!("block of {count} items exceeds the record"));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

/// Decodes a body written with the current `RawAuditEvent` schema.
pub fn raw_audit_event(body: &[u8]) -> Result<RawAuditEvent, DirectError> {
    let mut c = Cursor { bytes: body, at: 0 };
    let id_text = c.string()?;
    let event_id = uuid::Uuid::parse_str(&id_text)
        .or_else(|e| c.fail(format!("event_id {id_text:?} is not a UUID: {e}")))?;
    let timestamp = Timestamp::from_micros(c.long()?);
    let type_text = c.string()?;
    let event_type =
        EventType::new(type_text).or_else(|e| c.fail(format!("invalid event_type: {e}")))?;
    let source = match c.int()? {
        0 => Source::Client,
        1 => Source::Server,
        s => return c.fail(format!("Source symbol {s}")),
    };
    let service = c.string()?;
    let session_id = c.opt_string()?;
    let user_id = c.opt_string()?;
    let username = c.opt_string()?;
    let tenant = c.opt_string()?;
    let success = c.boolean()?;
    let message = c.opt_string()?;
    let mut entities = Vec::new();
    c.blocks(|c| {
        let kind = c.string()?;
        let id = c.string()?;
        let name = c.opt_string()?;
        let role = c.long()?;
        let Some(role) = EntityRole::from_index(role) else {
            return c.fail(format!("EntityRole symbol {role}"));
        };
        entities.push(EntityRef {
            kind,
            id,
            name,
            role,
        });
        Ok(())
    })?;
    let mut params = BTreeMap::new();
    c.blocks(|c| {
        let k = c.string()?;
        let v = c.string()?;
        params.insert(k, v);
        Ok(())
    })?;
    let response = c.opt_string()?;
    let error = c.optional(|c| {
        Ok(ErrorInfo {
            code: c.opt_string()?,
            message: c.opt_string()?,
            stack_trace: c.opt_string()?,
            fingerprint: c.opt_string()?,
        })
    })?;
    let client = c.optional(|c| {
        Ok(ClientInfo {
            ip: c.opt_string()?,
            user_agent: c.opt_string()?,
        })
    })?;
    let ingest = c.optional(|c| {
        let credential = match c.int()? {
            0 => Credential::ServiceToken,
            1 => Credential::BrowserToken,
            2 => Credential::Anonymous,
            s => return c.fail(format!("Credential symbol {s}")),
        };
        let key_id = c.opt_string()?;
        let peer_ip = c.opt_string()?;
        let mut overridden = BTreeMap::new();
        c.blocks(|c| {
            let k = c.string()?;
            let v = c.string()?;
            overridden.insert(k, v);
            Ok(())
        })?;
        Ok(IngestContext {
            credential,
            key_id,
            peer_ip,
            overridden,
        })
    })?;
    let utc_offset_minutes = c.optional(|c| c.int())?;
    if c.at != body.len() {
        return c.fail(format!("{} unexpected trailing bytes", body.len() - c.at));
    }
    Ok(RawAuditEvent {
        event_id,
        timestamp,
        event_type,
        source,
        service,
        session_id,
        user_id,
        username,
        tenant,
        success,
        message,
        entities,
        params,
        response,
        error,
        client,
        ingest,
        utc_offset_minutes,
    })
}
