use super::*;
use crate::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use uuid::Uuid;

fn raw_example() -> RawAuditEvent {
    RawAuditEvent {
        event_id: Uuid::new_v4(),
        timestamp: Timestamp::from_micros(1_541_413_229_411_000),
        event_type: EventType::new("query-created").unwrap(),
        source: Source::Client,
        service: "web".into(),
        session_id: Some("s1".into()),
        user_id: Some("u1".into()),
        username: None,
        tenant: Some("t".into()),
        success: true,
        message: Some("HELLO WORLD".into()),
        entities: vec![EntityRef {
            kind: "query".into(),
            id: "q1".into(),
            name: Some("Sales".into()),
            role: Default::default(),
        }],
        params: [("test".to_string(), "\"value\"".to_string())].into(),
        response: Some("{}".into()),
        error: Some(ErrorInfo::default()),
        client: Some(ClientInfo {
            ip: Some("127.0.0.1".into()),
            user_agent: None,
        }),
        ingest: None,
        utc_offset_minutes: None,
    }
}

fn enriched_example() -> EnrichedAuditEvent {
    EnrichedAuditEvent {
        event: raw_example(),
        user: Some(ResolvedUser {
            id: "u1".into(),
            login: "alice".into(),
            name: None,
        }),
        groups: vec![GroupRef {
            id: "g1".into(),
            name: "analysts".into(),
        }],
        session: Some(SessionInfo {
            id: "s1".into(),
            started_at: Timestamp::from_micros(1),
            ip: None,
        }),
        enrichment: Enrichment::SessionUnknown,
        claimed_user_mismatch: true,
        pipeline: PipelineMeta {
            received_at: Timestamp::from_micros(2),
            enriched_at: Timestamp::from_micros(3),
            raw_partition: 7,
            raw_offset: 1 << 40,
        },
        event_time: EventTimeCheck::TooOld,
        chain: None,
        catalog: None,
    }
}

#[test]
fn every_record_round_trips() {
    let raw = raw_example();
    assert_eq!(RawAuditEvent::decode(&raw.encode().unwrap()).unwrap(), raw);
    let enriched = enriched_example();
    assert_eq!(
        EnrichedAuditEvent::decode(&enriched.encode().unwrap()).unwrap(),
        enriched
    );
    for entry in [
        DirectoryEntry::Session(Session {
            id: "s".into(),
            user_id: "u".into(),
            started_at: Timestamp::from_micros(5),
            ip: Some("::1".into()),
            user_agent: None,
            last_activity_at: None,
            ended_at: None,
        }),
        DirectoryEntry::User(User {
            id: "u".into(),
            login: "alice".into(),
            name: Some("Alice".into()),
            group_ids: vec!["g".into()],
            scim: None,
        }),
        DirectoryEntry::Group(Group {
            id: "g".into(),
            name: "analysts".into(),
            parent_ids: vec!["root".into()],
            scim: None,
        }),
    ] {
        let rec = DirectoryRecord { entry };
        assert_eq!(
            DirectoryRecord::decode(&rec.encode().unwrap()).unwrap(),
            rec
        );
    }
    let rule = AuditRule {
        id: "r1".into(),
        order: -3,
        description: None,
        groups: vec!["analysts".into()],
        users: vec![],
        event_types: vec!["query-*".into()],
        action: RuleAction::Drop,
    };
    assert_eq!(AuditRule::decode(&rule.encode().unwrap()).unwrap(), rule);
    let dl = DeadLetter {
        original_key: Some(b"k".to_vec()),
        original_value: Some(vec![0, 159, 146, 150]),
        stage: "enricher".into(),
        reason: "bad".into(),
        source_topic: Some("audit.raw".into()),
        source_partition: Some(1),
        source_offset: Some(2),
        failed_at: Timestamp::from_micros(9),
        cause: "too_large".into(),
        original_size: Some(4),
        original_sha256: Some("ab".into()),
        original_truncated: true,
    };
    assert_eq!(DeadLetter::decode(&dl.encode().unwrap()).unwrap(), dl);
}

#[test]
fn header_is_the_avro_single_object_header() {
    let bytes = raw_example().encode().unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    // The library's own single-object reader agrees on marker and fingerprint byte order, so any
    // Avro implementation can read our topics.
    let schema = &RawAuditEvent::schemas().current().schema;
    let reader = apache_avro::GenericSingleObjectReader::new(schema.clone()).unwrap();
    let value = reader.read_value(&mut &bytes[..]).unwrap();
    let back: RawAuditEvent = apache_avro::from_value(&value).unwrap();
    assert_eq!(back, raw_example_with_id(&bytes));
}

fn raw_example_with_id(bytes: &[u8]) -> RawAuditEvent {
    let decoded = RawAuditEvent::decode(bytes).unwrap();
    RawAuditEvent {
        event_id: decoded.event_id,
        ..raw_example()
    }
}

#[test]
fn any_record_recognises_every_topic_by_fingerprint() {
    let raw = AnyRecord::decode(&raw_example().encode().unwrap()).unwrap();
    assert_eq!(raw.record_name(), "RawAuditEvent");
    let enriched = AnyRecord::decode(&enriched_example().encode().unwrap()).unwrap();
    assert_eq!(enriched.record_name(), "EnrichedAuditEvent");
    let json = serde_json::to_value(&enriched).unwrap();
    assert_eq!(json["enrichment"], "SESSION_UNKNOWN");
    assert_eq!(json["event"]["event_type"], "query-created");
}

#[test]
fn fingerprints_are_distinct() {
    let fps = [
        RawAuditEvent::schemas().current().fingerprint,
        EnrichedAuditEvent::schemas().current().fingerprint,
        DirectoryRecord::schemas().current().fingerprint,
        AuditRule::schemas().current().fingerprint,
        DeadLetter::schemas().current().fingerprint,
    ];
    let unique: std::collections::HashSet<_> = fps.iter().collect();
    assert_eq!(unique.len(), fps.len());
}

#[test]
fn enriched_schema_embeds_the_current_raw_schema() {
    let enriched = &EnrichedAuditEvent::schemas().current().schema;
    let apache_avro::Schema::Record(rec) = enriched else {
        panic!("not a record")
    };
    let event = rec.fields.iter().find(|f| f.name == "event").unwrap();
    assert_eq!(
        event.schema.canonical_form(),
        RawAuditEvent::schemas().current().schema.canonical_form()
    );
}

#[test]
fn clear_errors_for_bad_bytes() {
    let good = raw_example().encode().unwrap();
    assert!(matches!(
        RawAuditEvent::decode(&good[..5]),
        Err(DecodeError::TooShort { len: 5 })
    ));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'{';
    let e = RawAuditEvent::decode(&bad_magic).unwrap_err();
    assert!(e.to_string().contains("C3 01"), "{e}");
    let mut unknown = good.clone();
    unknown[2] ^= 0xFF;
    assert!(matches!(
        RawAuditEvent::decode(&unknown),
        Err(DecodeError::UnknownFingerprint { .. })
    ));
    assert!(matches!(
        AnyRecord::decode(&unknown),
        Err(DecodeError::UnknownSchema { .. })
    ));
    // An enriched record on the raw topic names what it is not.
    let wrong = enriched_example().encode().unwrap();
    let e = RawAuditEvent::decode(&wrong).unwrap_err();
    assert!(e.to_string().contains("RawAuditEvent"), "{e}");
    let truncated = RawAuditEvent::decode(&good[..good.len() - 3]).unwrap_err();
    assert!(
        matches!(truncated, DecodeError::Direct { .. }),
        "{truncated}"
    );
    assert!(matches!(
        RawAuditEvent::schemas().decode::<RawAuditEvent>(&good[..good.len() - 3]),
        Err(DecodeError::Body { .. })
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    let e = RawAuditEvent::decode(&trailing).unwrap_err();
    assert!(e.to_string().contains("1 unexpected trailing bytes"), "{e}");
    assert!(matches!(
        RawAuditEvent::schemas().decode::<RawAuditEvent>(&trailing),
        Err(DecodeError::TrailingBytes { count: 1, .. })
    ));
}

#[test]
fn invalid_event_type_in_a_well_formed_body_is_rejected() {
    // Written by a foreign producer with the right schema but a type we never accept.
    let mut raw = raw_example();
    raw.event_type = EventType::new("log").unwrap();
    let bytes = raw.encode().unwrap();
    let good_len = bytes.len();
    let mut value = apache_avro::to_value(&raw).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields[2].1 = apache_avro::types::Value::String("bad type".into());
    }
    let schema = &RawAuditEvent::schemas().current().schema;
    let body = apache_avro::to_avro_datum(schema, value).unwrap();
    let mut forged = bytes[..HEADER_LEN].to_vec();
    forged.extend(body);
    assert_ne!(forged.len(), good_len);
    let e = RawAuditEvent::decode(&forged).unwrap_err();
    assert!(e.to_string().contains("invalid event_type"), "{e}");
    let e = RawAuditEvent::schemas()
        .decode::<RawAuditEvent>(&forged)
        .unwrap_err();
    assert!(matches!(e, DecodeError::Invalid { .. }), "{e}");
}

/// An earlier version of RawAuditEvent (without `message` and `client`) must still decode, with
/// the new fields taking their defaults: the evolution rule every schema change follows.
#[test]
fn old_schema_versions_still_decode() {
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("../../avro/raw_audit_event.v1.avsc")).unwrap();
    let mut v0 = v1.clone();
    let fields = v0["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "message" && f["name"] != "client");
    let v0_text: &'static str = Box::leak(v0.to_string().into_boxed_str());
    let v1_text: &'static str = include_str!("../../avro/raw_audit_event.v1.avsc");
    let versions = SchemaVersions::parse("RawAuditEvent", &[v0_text, v1_text]);
    let old_only = SchemaVersions::parse("RawAuditEvent", &[v0_text]);

    #[derive(serde::Serialize)]
    struct OldRaw<'a> {
        event_id: String,
        timestamp: i64,
        event_type: &'a str,
        source: Source,
        service: &'a str,
        session_id: Option<&'a str>,
        user_id: Option<&'a str>,
        username: Option<&'a str>,
        tenant: Option<&'a str>,
        success: bool,
        entities: Vec<EntityRef>,
        params: std::collections::BTreeMap<String, String>,
        response: Option<&'a str>,
        error: Option<ErrorInfo>,
    }
    let id = Uuid::new_v4();
    let mut bytes = Vec::new();
    old_only
        .encode_into(
            &OldRaw {
                event_id: id.to_string(),
                timestamp: 42,
                event_type: "log",
                source: Source::Server,
                service: "svc",
                session_id: None,
                user_id: Some("u"),
                username: None,
                tenant: None,
                success: false,
                entities: vec![],
                params: Default::default(),
                response: None,
                error: None,
            },
            &mut bytes,
        )
        .unwrap();
    let e: RawAuditEvent = versions.decode(&bytes).unwrap();
    assert_eq!(e.event_id, id);
    assert_eq!(e.user_id.as_deref(), Some("u"));
    assert_eq!(e.message, None);
    assert_eq!(e.client, None);
    assert!(!e.success);
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including control characters and the empty string: the codec must carry
    // whatever validation let through, byte for byte.
    any::<String>()
}

prop_compose! {
    pub(crate) fn arb_raw()(
        id in any::<u128>(),
        ts in any::<i64>(),
        event_type in "[A-Za-z0-9_.:-]{1,128}",
        client in any::<bool>(),
        service in text(),
        session_id in option::of(text()),
        user_id in option::of(text()),
        username in option::of(text()),
        tenant in option::of(text()),
        success in any::<bool>(),
        message in option::of(text()),
        entities in vec((text(), text(), option::of(text()), 0..5i64), 0..4),
        params in btree_map(text(), text(), 0..6),
        response in option::of(text()),
        error in option::of((option::of(text()), option::of(text()), option::of(text()), option::of(text()))),
        client_info in option::of((option::of(text()), option::of(text()))),
        ingest in option::of((0..3u8, option::of(text()), option::of(text()), btree_map(text(), text(), 0..3))),
        utc_offset_minutes in option::of(-1440..1440i32),
    ) -> RawAuditEvent {
        RawAuditEvent {
            event_id: Uuid::from_u128(id),
            timestamp: Timestamp::from_micros(ts),
            event_type: EventType::new(event_type).unwrap(),
            source: if client { Source::Client } else { Source::Server },
            service, session_id, user_id, username, tenant, success, message,
            entities: entities.into_iter().map(|(kind, id, name, role)| EntityRef { kind, id, name, role: EntityRole::from_index(role).unwrap() }).collect(),
            params, response,
            error: error.map(|(code, message, stack_trace, fingerprint)| ErrorInfo { code, message, stack_trace, fingerprint }),
            client: client_info.map(|(ip, user_agent)| ClientInfo { ip, user_agent }),
            ingest: ingest.map(|(credential, key_id, peer_ip, overridden)| IngestContext {
                credential: [Credential::ServiceToken, Credential::BrowserToken, Credential::Anonymous][usize::from(credential)],
                key_id, peer_ip, overridden,
            }),
            utc_offset_minutes,
        }
    }
}

prop_compose! {
    /// Any enriched event the model can hold; its strings are any Unicode.
    pub(crate) fn arb_enriched()(
        event in arb_raw(),
        user in option::of((text(), text(), option::of(text()))),
        groups in vec((text(), text()), 0..5),
        session in option::of((text(), any::<i64>(), option::of(text()))),
        enrichment in prop_oneof![Just(Enrichment::Enriched), Just(Enrichment::SessionUnknown), Just(Enrichment::NoSession)],
        mismatch in any::<bool>(),
        meta in (any::<i64>(), any::<i64>(), any::<i32>(), any::<i64>()),
        event_time in prop_oneof![Just(EventTimeCheck::Plausible), Just(EventTimeCheck::TooOld), Just(EventTimeCheck::Ahead)],
        chain in option::of((text(), any::<i64>(), text(), text(), option::of(text()))),
        catalog in option::of((0..47usize, any::<bool>())),
    ) -> EnrichedAuditEvent {
        EnrichedAuditEvent {
            event,
            user: user.map(|(id, login, name)| ResolvedUser { id, login, name }),
            groups: groups.into_iter().map(|(id, name)| GroupRef { id, name }).collect(),
            session: session.map(|(id, t, ip)| SessionInfo { id, started_at: Timestamp::from_micros(t), ip }),
            enrichment,
            claimed_user_mismatch: mismatch,
            pipeline: PipelineMeta {
                received_at: Timestamp::from_micros(meta.0),
                enriched_at: Timestamp::from_micros(meta.1),
                raw_partition: meta.2,
                raw_offset: meta.3,
            },
            event_time,
            chain: chain.map(|(epoch, seq, prev, hash, salt)| crate::chain::ChainLink { epoch, seq, prev, hash, salt }),
            catalog: catalog.map(|(i, kind)| {
                let entry = crate::catalog::CATALOG[i];
                CatalogMatch {
                    event_type: EventType::new(entry.name).unwrap(),
                    kind: kind.then(|| entry.entity_kind.unwrap_or("x").to_string()),
                    action: entry.action.to_string(),
                }
            }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn raw_round_trips(e in arb_raw()) {
        let bytes = e.encode().unwrap();
        prop_assert_eq!(RawAuditEvent::decode(&bytes).unwrap(), e);
    }

    /// The direct decoder and the generic resolving decoder agree on every event.
    #[test]
    fn direct_and_generic_decoders_agree(e in arb_raw()) {
        let bytes = e.encode().unwrap();
        let generic: RawAuditEvent = RawAuditEvent::schemas().decode(&bytes).unwrap();
        prop_assert_eq!(&generic, &e);
        prop_assert_eq!(RawAuditEvent::decode(&bytes).unwrap(), generic);
    }

    /// On garbage both decoders refuse (neither panics), so no record is accepted by one path
    /// and refused by the other.
    #[test]
    fn direct_and_generic_decoders_refuse_alike(body in vec(any::<u8>(), 0..256)) {
        let mut bytes = RawAuditEvent::schemas().current().fingerprint.0.to_vec();
        bytes.splice(0..0, MAGIC);
        bytes.extend(&body);
        let direct = RawAuditEvent::decode(&bytes);
        let generic = RawAuditEvent::schemas().decode::<RawAuditEvent>(&bytes);
        prop_assert_eq!(direct.is_ok(), generic.is_ok(), "direct {:?} generic {:?}", direct, generic);
    }

    /// The direct encoder writes exactly the bytes apache-avro writes for every event.
    #[test]
    fn direct_and_generic_encoders_agree(e in arb_enriched()) {
        let mut generic = Vec::new();
        EnrichedAuditEvent::schemas().encode_into(&e, &mut generic).unwrap();
        prop_assert_eq!(e.encode().unwrap(), generic);
    }

    #[test]
    fn enriched_round_trips(e in arb_enriched()) {
        let bytes = e.encode().unwrap();
        prop_assert_eq!(EnrichedAuditEvent::decode(&bytes).unwrap(), e);
    }

    /// Garbage after a valid header never panics and never decodes into something silently.
    #[test]
    fn garbage_bodies_fail_cleanly(body in vec(any::<u8>(), 0..512)) {
        let mut bytes = RawAuditEvent::schemas().current().fingerprint.0.to_vec();
        bytes.splice(0..0, MAGIC);
        bytes.extend(&body);
        let _ = RawAuditEvent::decode(&bytes);
        let _ = AnyRecord::decode(&bytes);
    }

    /// Truncating a valid record anywhere gives an error, not a shorter record.
    #[test]
    fn truncation_is_detected(e in arb_raw(), cut in any::<prop::sample::Index>()) {
        let bytes = e.encode().unwrap();
        let at = cut.index(bytes.len());
        prop_assert!(RawAuditEvent::decode(&bytes[..at]).is_err());
    }
}

/// Dead letters written before v2 (no cause, size or hash) still decode.
#[test]
fn dead_letters_of_v1_still_decode() {
    #[derive(serde::Serialize)]
    struct V1 {
        #[serde(with = "apache_avro::serde_avro_bytes_opt")]
        original_key: Option<Vec<u8>>,
        #[serde(with = "apache_avro::serde_avro_bytes_opt")]
        original_value: Option<Vec<u8>>,
        stage: &'static str,
        reason: &'static str,
        source_topic: Option<&'static str>,
        source_partition: Option<i32>,
        source_offset: Option<i64>,
        failed_at: i64,
    }
    let v1 = SchemaVersions::parse(
        "DeadLetter",
        &[include_str!("../../avro/dead_letter.v1.avsc")],
    );
    let mut bytes = Vec::new();
    v1.encode_into(
        &V1 {
            original_key: None,
            original_value: Some(b"x".to_vec()),
            stage: "enricher",
            reason: "bad",
            source_topic: Some("audit.raw"),
            source_partition: Some(0),
            source_offset: Some(7),
            failed_at: 5,
        },
        &mut bytes,
    )
    .unwrap();
    let dl = DeadLetter::decode(&bytes).unwrap();
    assert_eq!(dl.original_value.as_deref(), Some(&b"x"[..]));
    assert_eq!(dl.cause, "unknown");
    assert_eq!(dl.original_size, None);
    assert!(!dl.original_truncated);
}

/// Records written before the ingest context and the error fingerprint (raw v1, enriched v2)
/// decode with both empty.
#[test]
fn raw_v1_records_decode_without_ingest_context() {
    use apache_avro::types::Value as Avro;
    let versions = RawAuditEvent::schemas();
    let v1 = &versions.all()[0];
    let mut example = raw_example();
    example.error = Some(ErrorInfo {
        code: Some("E1".into()),
        ..ErrorInfo::default()
    });
    let Avro::Record(mut fields) = apache_avro::to_value(&example).unwrap() else {
        panic!("a record")
    };
    fields.retain(|(name, _)| name != "ingest");
    for (name, value) in &mut fields {
        if name == "error" {
            if let Avro::Union(_, inner) = value {
                if let Avro::Record(error_fields) = inner.as_mut() {
                    error_fields.retain(|(n, _)| n != "fingerprint");
                }
            }
        }
    }
    let resolved = Avro::Record(fields).resolve(&v1.schema).unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend(v1.fingerprint.0);
    bytes.extend(apache_avro::to_avro_datum(&v1.schema, resolved).unwrap());
    let decoded = RawAuditEvent::decode(&bytes).unwrap();
    assert_eq!(decoded.ingest, None);
    assert_eq!(decoded.error.unwrap().code.as_deref(), Some("E1"));
    assert_eq!(decoded.event_id, example.event_id);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The enricher's direct content digest and the verifier's (through the JSON tree) agree.
    #[test]
    fn the_direct_content_digest_is_the_canonical_ones(
        e in arb_raw(),
        partition in any::<i32>(),
        offset in any::<i64>(),
        json_params in vec((text(), prop_oneof![
            Just("null".to_string()), Just("{}".to_string()), Just("{\"a\":null}".to_string()),
            Just("[null,{},1.5]".to_string()), Just("\"42\"".to_string()), Just("{\"b\":{\"c\":[]}}".to_string()),
        ]), 0..4),
    ) {
        let mut e = e;
        e.params.extend(json_params);
        let canonical = crate::chain::canonical(&e, partition, offset);
        prop_assert_eq!(
            crate::chain::event_digest(&e, partition, offset),
            crate::chain::content_digest(&canonical)
        );
    }
}
