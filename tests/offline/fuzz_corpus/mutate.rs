//! A small deterministic mutator for the stable replay: libFuzzer cannot run without nightly,
//! so CI explores around the seed corpus itself, with a fixed seed so a failure reproduces.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Inputs stay below libFuzzer's default `-max_len`.
const MAX_LEN: usize = 4096;

/// xorshift64*: fast, deterministic, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One to four mutations of `input`: bit flips, byte changes, inserts, deletions,
/// truncation, splices with another corpus entry, duplicated chunks and dictionary tokens.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = *[0, 1, 0x7f, 0x80, 0xff, rng.next() as u8]
                    .get(rng.below(6))
                    .unwrap_or(&0);
            }
            2 => {
                let at = rng.below(len + 1);
                out.insert(at, rng.next() as u8);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                out.drain(at..at + n);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                let chunk = out[at..at + n].to_vec();
                let to = rng.below(len + 1);
                out.splice(to..to, chunk);
            }
            7 | 8 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || at == len {
                    out.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    out.splice(at..end, token.iter().copied());
                }
            }
            _ => {}
        }
    }
    out.truncate(MAX_LEN);
    out
}

/// Every file in `dir`, by name.
pub fn corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Runs `target` on `input`; on a panic, fails with the input so it can be added to the corpus.
pub fn run_one(target_name: &str, what: &str, input: &[u8], target: fn(&[u8]) -> bool) -> bool {
    match catch_unwind(AssertUnwindSafe(|| target(input))) {
        Ok(accepted) => accepted,
        Err(_) => panic!(
            "fuzz target {target_name} failed on {what}: input b\"{}\"",
            input.escape_ascii()
        ),
    }
}

/// `iterations` mutated inputs from the corpus; returns how many the target accepted.
pub fn explore(
    target_name: &str,
    corpus: &[Vec<u8>],
    dict: &[&[u8]],
    iterations: usize,
    target: fn(&[u8]) -> bool,
) -> usize {
    // The seed depends on the target only, so a failure reproduces run after run.
    let extra: u64 = std::env::var("AMBIT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let seed = target_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ extra;
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    for i in 0..iterations {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, corpus, dict);
        if run_one(target_name, &format!("mutation {i}"), &input, target) {
            accepted += 1;
        }
    }
    accepted
}
