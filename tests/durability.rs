//! Durability across daemon death: after each acknowledged close the test records what the
//! file must hold; the daemon is SIGKILLed at random points; after remount every file holds
//! its last acknowledged generation, or the one whose close was in flight.

use crate::util::{seed, write_file, Mounted, Rng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default, Clone)]
struct Expect {
    acked: Option<Vec<u8>>,
    in_flight: Option<Vec<u8>>,
}

fn payload(round: u64, i: u64, rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300_000) as usize + 1;
    let tag = format!("r{round}-i{i}-");
    tag.bytes().cycle().take(len).collect()
}

#[test]
fn acknowledged_closes_survive_kill_9() {
    let mut m = Mounted::new("kill9");
    let mut rng = Rng::new(seed("acknowledged_closes_survive_kill_9"));
    let state: Arc<Mutex<HashMap<String, Expect>>> = Arc::default();
    for round in 0..25u64 {
        let mnt = m.mnt.clone();
        let st = state.clone();
        let mut wrng = Rng::new(rng.next());
        let writer = std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("f{}", wrng.below(12));
                let data = payload(round, i, &mut wrng);
                st.lock().unwrap().entry(name.clone()).or_default().in_flight = Some(data.clone());
                match write_file(&mnt.join(&name), &data) {
                    Ok(()) => {
                        let mut s = st.lock().unwrap();
                        let e = s.get_mut(&name).unwrap();
                        e.acked = Some(data);
                        e.in_flight = None;
                    }
                    Err(_) => return i,
                }
            }
            unreachable!()
        });
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        m.kill9();
        let closes = writer.join().unwrap();
        m.detach();
        m.mount();
        let mut s = state.lock().unwrap();
        for (name, e) in s.iter_mut() {
            let got = std::fs::read(m.path(name)).ok();
            // A file whose first write was in flight may also survive as created but empty.
            let created_only = e.acked.is_none() && got.as_deref() == Some(&[][..]);
            let ok = got == e.acked || (e.in_flight.is_some() && got == e.in_flight) || created_only;
            assert!(
                ok,
                "round {round}: {name} holds {:?} bytes, acknowledged {:?}, in flight {:?}",
                got.as_ref().map(|g| g.len()),
                e.acked.as_ref().map(|g| g.len()),
                e.in_flight.as_ref().map(|g| g.len())
            );
            // Whatever is there now is the acknowledged state for the next round.
            e.acked = got;
            e.in_flight = None;
        }
        eprintln!("round {round}: {closes} closes before the kill, {} files verified", s.len());
    }
}
