//! Identity keys: key files (creation, permissions, corruption, the one-process lock), default
//! paths, the text forms of IDs and keys (round trips, typo detection), bootstrap entries, and
//! the Noise binding.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use voxmesh::identity::text::TextError;
use voxmesh::identity::{
    Binding, BindingError, BootstrapEntry, BootstrapError, Identity, KeyFileError, NodeKey,
    PublicKey, UserId, key_path_from,
};

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "voxmesh-identity-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_file_is_created_on_first_use_with_private_permissions() {
    let dir = scratch_dir();
    let path = dir.join("config/voxmesh/identity");
    let (a, created) = Identity::load_or_create(&path).unwrap();
    assert!(created);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let (b, created) = Identity::load_or_create(&path).unwrap();
    assert!(!created);
    assert_eq!(a.id(), b.id());
    assert_eq!(a.node_key(), b.node_key());
    // The file says which ID it holds, for people.
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(&a.id().to_string()));
    // Never overwritten.
    assert!(matches!(
        a.save_new(&path),
        Err(KeyFileError::Create { .. })
    ));
    fs::remove_dir_all(dir).unwrap();
}

/// The lock is on the file, not the path: a second lock through the same path, a relative
/// path or a symlink is refused, naming the holder (this process: `flock` locks belong to open
/// files, so one process conflicts with itself too); dropping the lock frees it. The refusal
/// leaves the file alone, and a corrupt file that is locked still reports the corruption once
/// free.
#[test]
fn a_locked_identity_is_refused_through_every_path_until_released() {
    let dir = scratch_dir();
    let path = dir.join("voxmesh/identity");
    let (a, created, lock) = Identity::load_or_create_locked(&path).unwrap();
    assert!(created);
    assert_eq!(lock.path(), path);
    assert_eq!(mode(&path), 0o600);
    let link = dir.join("alias");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let dotted = dir.join("voxmesh/../voxmesh/identity");
    for other in [&path, &link, &dotted] {
        match Identity::load_or_create_locked(other) {
            Err(e @ KeyFileError::InUse { .. }) => {
                let KeyFileError::InUse { path: named, pid } = &e else {
                    unreachable!()
                };
                assert_eq!(named, other);
                assert_eq!(*pid, Some(std::process::id()), "{e}");
                let msg = e.to_string();
                assert!(
                    msg.contains(&other.display().to_string())
                        && msg.contains(&format!("process {}", std::process::id())),
                    "{msg}"
                );
            }
            r => panic!("{}: {r:?}", other.display()),
        }
    }
    // Reading without the lock (what `dial` does) is never blocked.
    assert_eq!(Identity::load(&path).unwrap().id(), a.id());
    drop(lock);
    let (b, created, _lock) = Identity::load_or_create_locked(&link).unwrap();
    assert!(!created);
    assert_eq!(a.id(), b.id());
}

/// Processes racing to create one key: one file, one identity, every locker gets it in turn.
#[test]
fn racing_lockers_share_one_created_key() {
    let dir = scratch_dir();
    let path = dir.join("identity");
    // Each holds the lock only to read the key; a bound in case one never lets go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ids: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        match Identity::load_or_create_locked(&path) {
                            Ok((id, created, lock)) => {
                                drop(lock);
                                return (id.id(), created);
                            }
                            Err(KeyFileError::InUse { .. }) => {
                                assert!(std::time::Instant::now() < deadline, "lock never freed");
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ids.iter().filter(|(_, c)| *c).count(), 1, "{ids:?}");
    assert!(ids.iter().all(|(id, _)| *id == ids[0].0));
}

#[test]
fn key_files_readable_by_others_are_refused() {
    let dir = scratch_dir();
    let path = dir.join("identity");
    Identity::generate().save_new(&path).unwrap();
    for m in [0o644, 0o640, 0o604, 0o620, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(m)).unwrap();
        match Identity::load(&path) {
            Err(e @ KeyFileError::TooOpen { mode, .. }) => {
                assert_eq!(mode, m);
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
            other => panic!("mode {m:o}: {other:?}"),
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Identity::load(&path).is_ok());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn corrupt_key_files_are_refused_with_a_reason_and_left_alone() {
    let dir = scratch_dir();
    let good = Identity::from_seed(&[3; 32]).key_file_text();
    let key_line = good.lines().last().unwrap().to_string();
    let mut typo = key_line.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'q' { b'p' } else { b'q' };
    let typo = String::from_utf8(typo).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "no key line"),
        ("comments only", b"# nothing\n".to_vec(), "no key line"),
        ("typo", typo.into_bytes(), "checksum"),
        ("truncated", key_line.as_bytes()[..40].to_vec(), "key line"),
        (
            "two keys",
            format!("{key_line}\n{key_line}\n").into_bytes(),
            "more than one",
        ),
        ("binary", vec![0xff, 0xfe, 0, 1, 2], "UTF-8"),
        (
            "an ID, not a key",
            Identity::from_seed(&[3; 32]).id().to_string().into_bytes(),
            "prefix",
        ),
        ("huge", vec![b'#'; 10_000], "larger"),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.join(name.replace(' ', "_"));
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        match Identity::load(&path) {
            Err(e @ KeyFileError::Corrupt { .. }) => {
                assert!(e.to_string().contains(reason), "{name}: {e}");
                assert!(e.to_string().contains("backup"), "{name}: {e}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // load_or_create must not replace a damaged identity.
        assert!(Identity::load_or_create(&path).is_err(), "{name}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name}: file untouched");
    }
    // A directory where the file should be.
    assert!(matches!(
        Identity::load(&dir),
        Err(KeyFileError::NotAFile { .. })
    ));
    // Hand-edited but intact: extra comments and blank lines are fine.
    let path = dir.join("commented");
    fs::write(&path, format!("\n# mine\n\n  {key_line}  \n# end\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Identity::load(&path).unwrap().id(),
        Identity::from_seed(&[3; 32]).id()
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn default_key_path_follows_xdg() {
    let p = |x: Option<&str>, h: Option<&str>| {
        key_path_from(x.map(std::path::Path::new), h.map(std::path::Path::new))
    };
    let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
        (
            Some("/x/cfg"),
            Some("/home/u"),
            Some("/x/cfg/voxmesh/identity"),
        ),
        (
            None,
            Some("/home/u"),
            Some("/home/u/.config/voxmesh/identity"),
        ),
        // Relative XDG_CONFIG_HOME is ignored (XDG Base Directory spec).
        (
            Some("rel/cfg"),
            Some("/home/u"),
            Some("/home/u/.config/voxmesh/identity"),
        ),
        (
            Some(""),
            Some("/home/u"),
            Some("/home/u/.config/voxmesh/identity"),
        ),
        (None, None, None),
        (None, Some("relative"), None),
    ];
    for (x, h, want) in cases {
        assert_eq!(p(*x, *h), want.map(PathBuf::from), "{x:?} {h:?}");
    }
}

#[test]
fn user_id_text_round_trips_and_rejects_typos() {
    for seed in 0..50u8 {
        let id = Identity::from_seed(&[seed; 32]).id();
        let s = id.to_string();
        assert!(s.starts_with("vx1"));
        assert_eq!(s.len(), 41);
        assert_eq!(s.parse::<UserId>(), Ok(id));
        assert_eq!(s.to_uppercase().parse::<UserId>(), Ok(id));
        // Every single-character substitution is caught.
        let alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        for pos in 3..s.len() {
            for c in alphabet.chars() {
                if s.as_bytes()[pos] as char == c {
                    continue;
                }
                let mut t = s.clone();
                t.replace_range(pos..pos + 1, &c.to_string());
                assert!(t.parse::<UserId>().is_err(), "{t}");
            }
        }
        // Dropped, doubled and swapped characters too.
        let b = s.as_bytes();
        for pos in 3..s.len() {
            let mut d = b.to_vec();
            d.remove(pos);
            assert!(std::str::from_utf8(&d).unwrap().parse::<UserId>().is_err());
            let mut dup = b.to_vec();
            dup.insert(pos, b[pos]);
            assert!(
                std::str::from_utf8(&dup)
                    .unwrap()
                    .parse::<UserId>()
                    .is_err()
            );
            if pos + 1 < b.len() && b[pos] != b[pos + 1] {
                let mut sw = b.to_vec();
                sw.swap(pos, pos + 1);
                assert!(std::str::from_utf8(&sw).unwrap().parse::<UserId>().is_err());
            }
        }
    }
    let id = Identity::from_seed(&[1; 32]);
    // Other kinds of text are refused by their prefix.
    assert!(matches!(
        id.public().to_string().parse::<UserId>(),
        Err(TextError::WrongPrefix { .. })
    ));
    assert!(matches!(
        id.node_key().to_string().parse::<UserId>(),
        Err(TextError::WrongPrefix { .. })
    ));
    let s = id.id().to_string();
    let mixed = format!("{}{}", &s[..10].to_uppercase(), &s[10..]);
    assert_eq!(mixed.parse::<UserId>(), Err(TextError::MixedCase));
}

#[test]
fn ids_are_hashes_of_keys() {
    let a = Identity::from_seed(&[1; 32]);
    let b = Identity::from_seed(&[2; 32]);
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id(), UserId::of(a.public()));
    assert_eq!(a.public().id(), a.id());
    // Pinned values, so that no derivation (ID hash, Noise key, text form) changes silently: IDs
    // and node keys are stored in contacts files, host caches and bootstrap lists.
    let zero = Identity::from_seed(&[0; 32]);
    assert_eq!(
        zero.id().to_string(),
        "vx1wedzd8kmzcu4m0lxn7e0wz5rke9u8eef2khqwu"
    );
    assert_eq!(
        zero.public().to_string(),
        "vxpk18d4z00xwk6jz6c4r4rgz5mcdwdjny9thrh3y8f36cpy2rz6emg5sxx07jk"
    );
    assert_eq!(
        zero.node_key().to_string(),
        "vxk1wedzd8kmzcu4m0lxn7e0wz5rke9u8eefatl2qmwzemu3qj76spcvse3kt3p7atg6nmfzyqu2tgtvm2fe0atqdp7emh"
    );
}

#[test]
fn public_and_node_keys_round_trip() {
    let id = Identity::from_seed(&[4; 32]);
    let pk: PublicKey = id.public().to_string().parse().unwrap();
    assert_eq!(&pk, id.public());
    let nk: NodeKey = id.node_key().to_string().parse().unwrap();
    assert_eq!(nk, id.node_key());
    assert_eq!(nk.id, id.id());
    assert_eq!(&nk.noise, id.noise_public());
}

#[test]
fn bootstrap_entries_parse() {
    let key = Identity::from_seed(&[5; 32]).node_key();
    let ok: &[(String, &str, u16)] = &[
        (
            format!("{key}@sn1.example.org:7000"),
            "sn1.example.org",
            7000,
        ),
        (format!("{key}@198.51.100.1:3478"), "198.51.100.1", 3478),
        (format!("{key}@[2001:db8::1]:7000"), "2001:db8::1", 7000),
        (format!("  {key}@h:1\n"), "h", 1),
    ];
    for (text, host, port) in ok {
        let e: BootstrapEntry = text.parse().unwrap();
        assert_eq!(e.key, key);
        assert_eq!(&e.host, host);
        assert_eq!(e.port, *port);
        assert_eq!(e.to_string().parse::<BootstrapEntry>().unwrap(), e);
    }
    let mut typo = key.to_string();
    typo.replace_range(20..21, if &typo[20..21] == "q" { "p" } else { "q" });
    type Want = fn(&BootstrapError) -> bool;
    let bad: &[(String, Want)] = &[
        ("sn1.example.org:7000".into(), |e| {
            matches!(e, BootstrapError::NoAt)
        }),
        (format!("{typo}@h:7000"), |e| {
            matches!(e, BootstrapError::Key(_))
        }),
        (
            format!("{}@h:7000", Identity::from_seed(&[5; 32]).id()),
            |e| matches!(e, BootstrapError::Key(TextError::WrongPrefix { .. })),
        ),
        (format!("{key}@h"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
        (format!("{key}@h:0"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
        (format!("{key}@h:99999"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
        (format!("{key}@2001:db8::1:7000"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
        (format!("{key}@[nothex]:7000"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
        (format!("{key}@:7000"), |e| {
            matches!(e, BootstrapError::Address(_))
        }),
    ];
    for (text, want) in bad {
        let e = text.parse::<BootstrapEntry>().unwrap_err();
        assert!(want(&e), "{text}: {e:?}");
    }
}

#[test]
fn binding_covers_exactly_one_noise_key_and_identity() {
    let a = Identity::from_seed(&[1; 32]);
    let b = Identity::from_seed(&[2; 32]);
    let bytes = a.binding().encode();
    assert_eq!(
        Binding::verify(&bytes, a.noise_public()).unwrap().identity,
        *a.public()
    );
    // Another Noise key under A's binding.
    assert_eq!(
        Binding::verify(&bytes, b.noise_public()),
        Err(BindingError::BadSignature)
    );
    // A's signature presented as B's.
    let mut swapped = bytes;
    swapped[1..33].copy_from_slice(b.public().as_bytes());
    assert_eq!(
        Binding::verify(&swapped, a.noise_public()),
        Err(BindingError::BadSignature)
    );
    // A record signature is not a binding: domain separation. Sign the same 32 bytes as a
    // record-domain message and present it as a binding.
    let sig = a.sign(b"voxmesh/v1/record/presence\0", a.noise_public());
    let mut cross = bytes;
    cross[33..].copy_from_slice(&sig);
    assert_eq!(
        Binding::verify(&cross, a.noise_public()),
        Err(BindingError::BadSignature)
    );
    assert_eq!(
        Binding::verify(&bytes[..50], a.noise_public()),
        Err(BindingError::Malformed)
    );
    let mut v2 = bytes;
    v2[0] = 2;
    assert_eq!(
        Binding::verify(&v2, a.noise_public()),
        Err(BindingError::Malformed)
    );
}
