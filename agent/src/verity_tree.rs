//! Test support for dm-verity: [`build_tree`] writes a hash device from the kernel's
//! description of the format, independently of the builder. The tests here check
//! `kiln_contract::verity`, which init uses on the root's hash tree, against such trees
//! and against `veritysetup`, the reference implementation.

use std::process::Command;

use kiln_contract::verity::{block_digest, check_tree, hex, Geometry, Superblock, BLOCK, DIGEST};

/// Builds a hash device (superblock + levels, top first) and root hash for `data`,
/// written from the kernel's description of the format, to test the checker.
pub(crate) fn build_tree(data: &[u8], salt: &[u8]) -> (Vec<u8>, [u8; DIGEST]) {
    let data_blocks = (data.len() as u64).div_ceil(BLOCK);
    let g = Geometry::new(data_blocks);
    let mut below: Vec<[u8; DIGEST]> = data
        .chunks(BLOCK as usize)
        .map(|b| {
            let mut block = b.to_vec();
            block.resize(BLOCK as usize, 0);
            block_digest(salt, &block)
        })
        .collect();
    let mut levels = Vec::new();
    for &n in &g.level_blocks {
        let mut level: Vec<u8> = below.concat();
        level.resize((n * BLOCK) as usize, 0);
        below = level
            .chunks(BLOCK as usize)
            .map(|b| block_digest(salt, b))
            .collect();
        levels.push(level);
    }
    let mut dev = vec![0u8; BLOCK as usize];
    let sb = Superblock::kiln(data_blocks, salt, [0; 16]).to_bytes();
    dev[..sb.len()].copy_from_slice(&sb);
    for l in levels.iter().rev() {
        dev.extend_from_slice(l);
    }
    (dev, below[0])
}

/// `blocks` 4 KiB blocks of deterministic bytes that differ from block to block.
pub(crate) fn test_data(blocks: usize) -> Vec<u8> {
    (0..blocks * BLOCK as usize)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

#[test]
fn parses_the_superblock_and_rejects_what_kiln_does_not_write() {
    let (dev, _) = build_tree(&test_data(3), &[7; 32]);
    let sb = Superblock::parse(&dev).unwrap();
    assert_eq!(sb.data_blocks, 3);
    assert_eq!(sb.salt, vec![7; 32]);
    let with = |at: usize, bytes: &[u8]| {
        let mut d = dev.clone();
        d[at..at + bytes.len()].copy_from_slice(bytes);
        Superblock::parse(&d).unwrap_err().to_string()
    };
    assert!(with(0, b"VERITY").contains("no verity superblock"));
    assert!(with(8, &2u32.to_le_bytes()).contains("field version is 2"));
    assert!(with(12, &0u32.to_le_bytes()).contains("hash_type is 0"));
    assert!(with(32, b"sha1\0\0").contains("algorithm is \"sha1\""));
    assert!(with(64, &512u32.to_le_bytes()).contains("data_block_size is 512"));
    assert!(with(68, &1024u32.to_le_bytes()).contains("hash_block_size is 1024"));
    assert!(with(72, &0u64.to_le_bytes()).contains("data_blocks is 0"));
    assert!(with(80, &257u16.to_le_bytes()).contains("salt_size is 257"));
    assert!(Superblock::parse(&dev[..100])
        .unwrap_err()
        .to_string()
        .contains("100 bytes"));
    // An empty salt is legal.
    let (dev, _) = build_tree(&test_data(1), &[]);
    assert!(Superblock::parse(&dev).unwrap().salt.is_empty());
}

#[test]
fn accepts_a_good_tree_and_finds_each_changed_block() {
    let salt = [0x5a; 32];
    // 129 * 128 + 1 data blocks: three levels (130, 2, 1 blocks).
    let data = test_data(129 * 128 + 1);
    let (dev, root) = build_tree(&data, &salt);
    let sb = Superblock::parse(&dev).unwrap();
    assert_eq!(Geometry::new(sb.data_blocks).level_blocks, [130, 2, 1]);
    check_tree(&sb, &dev, &root).unwrap();

    // The top block (hash block 1) no longer matches the root hash.
    let mut bad = dev.clone();
    bad[4096 + 5] ^= 1;
    let e = check_tree(&sb, &bad, &root).unwrap_err();
    assert_eq!((e.level, e.block, e.hash_block), (2, 0, 1));
    assert_eq!(e.expected, root);
    assert!(e.to_string().contains("level 2 of 3"), "{e}");
    assert!(e.to_string().contains("but kiln.roothash= is"), "{e}");

    // Level 1's second block (hash block 3).
    let mut bad = dev.clone();
    bad[3 * 4096 + 4000] ^= 0x80;
    let e = check_tree(&sb, &bad, &root).unwrap_err();
    assert_eq!((e.level, e.block, e.hash_block), (1, 1, 3));
    assert!(e.to_string().contains("but level 2 block 0 records"), "{e}");

    // The last block of level 0 (hash block 4 + 129).
    let mut bad = dev.clone();
    bad[(4 + 129) * 4096] ^= 1;
    let e = check_tree(&sb, &bad, &root).unwrap_err();
    assert_eq!((e.level, e.block, e.hash_block), (0, 129, 133));
    assert!(e.to_string().contains("level 1 block 1 records"), "{e}");

    // A different root hash, and a tree cut short.
    let mut other = root;
    other[31] ^= 1;
    assert_eq!(check_tree(&sb, &dev, &other).unwrap_err().level, 2);
    let e = check_tree(&sb, &dev[..3 * 4096], &root).unwrap_err();
    assert_eq!(e.hash_block, 3);

    // A single data block has no tree to check (its own digest is the root hash).
    let (one, _) = build_tree(&test_data(1), &salt);
    let sb1 = Superblock::parse(&one).unwrap();
    check_tree(&sb1, &one, &[0; 32]).unwrap();
}

/// veritysetup (the reference implementation) formats a data file: the checker must
/// accept its hash device and root hash, and reject a changed byte or a wrong hash.
#[test]
fn accepts_veritysetups_tree_and_rejects_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data");
    let hash_path = dir.path().join("hash");
    // 1000 blocks: levels of 8 and 1 blocks.
    std::fs::write(&data_path, test_data(1000)).unwrap();
    let salt = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let out = Command::new("veritysetup")
        .args(["format", "--salt", salt])
        .args(["--uuid", "01234567-89ab-4def-8123-456789abcdef"])
        .arg(&data_path)
        .arg(&hash_path)
        .output()
        .expect("veritysetup is installed");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root_hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(str::trim)
        .unwrap();
    let mut root = [0u8; 32];
    for (i, b) in root.iter_mut().enumerate() {
        *b = u8::from_str_radix(&root_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let dev = std::fs::read(&hash_path).unwrap();
    let sb = Superblock::parse(&dev).unwrap();
    assert_eq!(sb.data_blocks, 1000);
    assert_eq!(hex(&sb.salt), salt);
    let g = Geometry::new(sb.data_blocks);
    assert_eq!(g.level_blocks, [8, 1]);
    assert!(dev.len() as u64 >= g.hash_blocks() * BLOCK);
    check_tree(&sb, &dev, &root).unwrap();
    // Our own builder agrees with veritysetup byte for byte over the tree.
    let (ours, our_root) = build_tree(&test_data(1000), &sb.salt);
    assert_eq!(our_root, root);
    assert_eq!(
        &ours[4096..],
        &dev[4096..(g.hash_blocks() * BLOCK) as usize]
    );

    for (at, level) in [(4096 + 17, 1), (2 * 4096 + 5 * 4096 + 99, 0)] {
        let mut bad = dev.clone();
        bad[at] ^= 0x01;
        let e = check_tree(&sb, &bad, &root).unwrap_err();
        assert_eq!(e.level, level, "{e}");
        // veritysetup agrees that the changed hash device no longer verifies.
        std::fs::write(&hash_path, &bad).unwrap();
        let v = Command::new("veritysetup")
            .arg("verify")
            .arg(&data_path)
            .arg(&hash_path)
            .arg(root_hex)
            .output()
            .unwrap();
        assert!(!v.status.success(), "veritysetup accepted a changed tree");
    }
}
