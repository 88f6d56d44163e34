//! `Kernel::understands`: what a mirror asks of every entry from its leader before applying it,
//! so that an older binary stops before what it cannot fold.

use cairn_kernel::{Event, Kernel, SCHEMA_NAME, SCHEMA_VERSION};

fn migrated(compat: u32) -> Event {
    Event::SchemaMigrated {
        schema: SCHEMA_NAME.into(),
        from: SCHEMA_VERSION,
        to: compat,
        compat,
        name: "next".into(),
    }
}

#[test]
fn known_kinds_are_understood_and_the_rest_is_named() {
    let kernel = Kernel::new();
    let var = Event::VarSet {
        owner: "p".into(),
        key: "k".into(),
        value: serde_bytes::ByteBuf::from(b"v".to_vec()),
    };
    assert_eq!(kernel.understands(var.kind(), &var.encode()), Ok(()));
    // A kind of a newer binary.
    let err = kernel.understands("var.set.v9", b"").unwrap_err();
    assert!(err.contains("var.set.v9"), "{err}");
    // Bytes that are not the payload of a schema migration: that one is decoded here, to
    // read its versions. (A built-in kind of any other subsystem is decoded once, at apply,
    // where a payload that does not decode stops the writer naming the offset.)
    let schema_kind = migrated(SCHEMA_VERSION);
    assert!(kernel.understands(schema_kind.kind(), &[0xff; 3]).is_err());
    // An extension this binary has not registered.
    let ext = Event::Ext {
        kind: "ext.shop.order.v1".into(),
        payload: vec![1],
    };
    let err = kernel.understands(ext.kind(), &ext.encode()).unwrap_err();
    assert!(
        err.contains("\"shop\"") && err.contains("not registered"),
        "{err}"
    );
}

#[test]
fn a_migration_past_this_binary_s_schema_is_not_understood() {
    let kernel = Kernel::new();
    let same = migrated(SCHEMA_VERSION);
    assert_eq!(kernel.understands(same.kind(), &same.encode()), Ok(()));
    let newer = migrated(SCHEMA_VERSION + 1);
    let err = kernel
        .understands(newer.kind(), &newer.encode())
        .unwrap_err();
    assert!(
        err.contains(&format!("compatibility version {}", SCHEMA_VERSION + 1))
            && err.contains(&format!("supports version {SCHEMA_VERSION}")),
        "{err}"
    );
}
