//! The store layout of a rollout: a head plus one record per instance,
//! written as they change, read back to the state as it was last written.

use std::collections::BTreeMap;

use super::fleet::{instances, spec};
use crate::rollout::persist::{decode, head_key, instances_prefix};
use crate::rollout::{Engine, Input, Millis, Output, RolloutState};

type Disk = BTreeMap<String, Vec<u8>>;

fn write(disk: &mut Disk, engine: &mut Engine) -> Vec<String> {
    let writes = engine.persist_writes().expect("encode");
    let keys = writes.iter().map(|(k, _)| k.clone()).collect();
    disk.extend(writes);
    keys
}

fn read(disk: &Disk, id: &str) -> Result<RolloutState, String> {
    let head = disk.get(&head_key(id)).expect("head stored");
    let prefix = instances_prefix(id);
    let records: Vec<(String, Vec<u8>)> = (disk.iter())
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    decode(head, &records)
}

#[test]
fn a_write_holds_the_head_and_only_the_instances_that_changed() {
    let (mut engine, outs) =
        Engine::start("web-1", spec(), instances(20), Millis(0)).expect("start");
    assert!(matches!(outs.first(), Some(Output::Persist)));
    let mut disk = Disk::new();
    let first = write(&mut disk, &mut engine);
    assert_eq!(
        first.len(),
        21,
        "the first write holds every instance: {first:?}"
    );
    assert_eq!(&read(&disk, "web-1").expect("read"), engine.state());

    // One instance reports unhealthy: the next write is the head and it.
    engine.handle(
        Millis(10),
        Input::Health {
            instance: "web@h20".to_string(),
            healthy: false,
            in_service: true,
            release: Some(super::fleet::v1()),
        },
    );
    let second = write(&mut disk, &mut engine);
    assert_eq!(
        second,
        vec![
            head_key("web-1"),
            format!("{}00000019", instances_prefix("web-1"))
        ]
    );
    assert_eq!(&read(&disk, "web-1").expect("read"), engine.state());

    // Nothing changed: the head alone.
    assert_eq!(write(&mut disk, &mut engine), vec![head_key("web-1")]);
}

#[test]
fn a_missing_or_stray_record_is_named() {
    let (mut engine, _) = Engine::start("web-1", spec(), instances(10), Millis(0)).expect("start");
    let mut disk = Disk::new();
    write(&mut disk, &mut engine);
    let second = format!("{}00000001", instances_prefix("web-1"));

    let mut lost = disk.clone();
    lost.remove(&second);
    let err = read(&lost, "web-1").expect_err("a record is missing");
    assert!(
        err.contains("9 instance records, its head says 10"),
        "{err}"
    );

    let mut moved = disk.clone();
    let record = moved.remove(&second).expect("record");
    moved.insert(format!("{}00000099", instances_prefix("web-1")), record);
    let err = read(&moved, "web-1").expect_err("a record is out of place");
    assert!(err.contains("expected instance record"), "{err}");
    assert!(err.contains(&second), "{err}");

    let mut torn = disk;
    torn.insert(second.clone(), b"{\"id\":".to_vec());
    let err = read(&torn, "web-1").expect_err("a record is cut short");
    assert!(err.starts_with(&second), "{err}");
}

#[test]
fn a_whole_state_written_by_an_older_coordinator_still_reads() {
    let (engine, _) = Engine::start("web-1", spec(), instances(10), Millis(0)).expect("start");
    let old = serde_json::to_vec(engine.state()).expect("encode");
    assert_eq!(&decode(&old, &[]).expect("read"), engine.state());
    let err = decode(b"not json", &[]).expect_err("garbage");
    assert!(err.starts_with("rollout head:"), "{err}");
}
