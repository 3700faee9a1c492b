//! A direct encoder for the current `EnrichedAuditEvent` schema: the Rust type straight into
//! Avro binary, without apache-avro's serde path (which builds and validates a `Value` tree per
//! record). It is the enricher's hot path. The property test in `codec::tests` checks that the
//! bytes equal apache-avro's for arbitrary events.

use crate::{
    ClientInfo, Credential, EnrichedAuditEvent, Enrichment, EntityRef, ErrorInfo, EventTimeCheck,
    RawAuditEvent, Source,
};

struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    /// Zig-zag varint, as Avro writes `int` and `long`.
    fn long(&mut self, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            self.buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buf.push(n as u8);
    }

    fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn boolean(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    /// `["null", T]`: branch 0 is null, 1 is the value.
    fn optional<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.long(0),
            Some(v) => {
                self.long(1);
                write(self, v);
            }
        }
    }

    fn opt_string(&mut self, s: Option<&str>) {
        self.optional(s, Self::string);
    }

    /// Arrays and maps: one block with its count, then the end marker (just the marker when
    /// empty), as apache-avro writes them.
    fn block<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut write: impl FnMut(&mut Self, T),
    ) {
        let n = items.len();
        if n > 0 {
            self.long(n as i64);
            for item in items {
                write(self, item);
            }
        }
        self.long(0);
    }
}

fn raw(w: &mut Writer<'_>, e: &RawAuditEvent) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    w.string(e.event_id.hyphenated().encode_lower(&mut id));
    w.long(e.timestamp.as_micros());
    w.string(e.event_type.as_str());
    w.long(match e.source {
        Source::Client => 0,
        Source::Server => 1,
    });
    w.string(&e.service);
    w.opt_string(e.session_id.as_deref());
    w.opt_string(e.user_id.as_deref());
    w.opt_string(e.username.as_deref());
    w.opt_string(e.tenant.as_deref());
    w.boolean(e.success);
    w.opt_string(e.message.as_deref());
    w.block(
        e.entities.iter(),
        |w,
         EntityRef {
             kind,
             id,
             name,
             role,
         }| {
            w.string(kind);
            w.string(id);
            w.opt_string(name.as_deref());
            w.long(role.index());
        },
    );
    w.block(e.params.iter(), |w, (k, v)| {
        w.string(k);
        w.string(v);
    });
    w.opt_string(e.response.as_deref());
    w.optional(
        e.error.as_ref(),
        |w,
         ErrorInfo {
             code,
             message,
             stack_trace,
             fingerprint,
         }| {
            w.opt_string(code.as_deref());
            w.opt_string(message.as_deref());
            w.opt_string(stack_trace.as_deref());
            w.opt_string(fingerprint.as_deref());
        },
    );
    w.optional(e.client.as_ref(), |w, ClientInfo { ip, user_agent }| {
        w.opt_string(ip.as_deref());
        w.opt_string(user_agent.as_deref());
    });
    w.optional(e.ingest.as_ref(), |w, i| {
        w.long(match i.credential {
            Credential::ServiceToken => 0,
            Credential::BrowserToken => 1,
            Credential::Anonymous => 2,
        });
        w.opt_string(i.key_id.as_deref());
        w.opt_string(i.peer_ip.as_deref());
        w.block(i.overridden.iter(), |w, (k, v)| {
            w.string(k);
            w.string(v);
        });
    });
    w.optional(e.utc_offset_minutes, |w, m| w.long(i64::from(m)));
}

/// Appends the body (no single-object header) of `e` in the current schema.
pub fn enriched_audit_event(e: &EnrichedAuditEvent, buf: &mut Vec<u8>) {
    let w = &mut Writer { buf };
    raw(w, &e.event);
    w.optional(e.user.as_ref(), |w, u| {
        w.string(&u.id);
        w.string(&u.login);
        w.opt_string(u.name.as_deref());
    });
    w.block(e.groups.iter(), |w, g| {
        w.string(&g.id);
        w.string(&g.name);
    });
    w.optional(e.session.as_ref(), |w, s| {
        w.string(&s.id);
        w.long(s.started_at.as_micros());
        w.opt_string(s.ip.as_deref());
    });
    w.long(match e.enrichment {
        Enrichment::Enriched => 0,
        Enrichment::SessionUnknown => 1,
        Enrichment::NoSession => 2,
    });
    w.boolean(e.claimed_user_mismatch);
    w.long(e.pipeline.received_at.as_micros());
    w.long(e.pipeline.enriched_at.as_micros());
    w.long(i64::from(e.pipeline.raw_partition));
    w.long(e.pipeline.raw_offset);
    w.long(match e.event_time {
        EventTimeCheck::Plausible => 0,
        EventTimeCheck::TooOld => 1,
        EventTimeCheck::Ahead => 2,
    });
    w.optional(e.chain.as_ref(), |w, c| {
        w.string(&c.epoch);
        w.long(c.seq);
        w.string(&c.prev);
        w.string(&c.hash);
        w.opt_string(c.salt.as_deref());
    });
    w.optional(e.catalog.as_ref(), |w, c| {
        w.string(c.event_type.as_str());
        w.opt_string(c.kind.as_deref());
        w.string(&c.action);
    });
}

/// Appends the body (no single-object header) of `e` in the current `RawAuditEvent` schema.
pub fn raw_audit_event(e: &RawAuditEvent, buf: &mut Vec<u8>) {
    raw(&mut Writer { buf }, e);
}
