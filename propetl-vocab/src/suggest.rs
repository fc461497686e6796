//! "Did you mean" suggestions for unknown names.

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance (or a prefix either way), if any.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, c), *c))
        .filter(|(d, c)| {
            *d <= (c.len() / 3).max(1) + 1 || c.starts_with(&lower) || lower.starts_with(c)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ``unknown {what} `{word}`; did you mean `x`? (expected one of: `a`, `b`)``.
pub fn unknown(what: &str, word: &str, candidates: &[&str]) -> String {
    let list = candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(word, candidates) {
        Some(c) => {
            format!("unknown {what} `{word}`; did you mean `{c}`? (expected one of: {list})")
        }
        None => format!("unknown {what} `{word}` (expected one of: {list})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words() {
        assert_eq!(
            closest("adaptor", &["adapter", "lora", "prefix"]),
            Some("adapter")
        );
        assert_eq!(
            closest("layer", &["none", "layers", "tasks", "layers+tasks"]),
            Some("layers")
        );
        assert_eq!(closest("zzzzzz", &["adapter", "lora", "prefix"]), None);
        assert_eq!(
            closest("gelu-new", &["relu", "gelu_new", "gelu"]),
            Some("gelu_new")
        );
        assert_eq!(closest("Layers", &["none", "layers"]), Some("layers"));
    }

    #[test]
    fn unknown_lists_every_candidate() {
        assert_eq!(
            unknown("mask", "binray", &["binary", "none"]),
            "unknown mask `binray`; did you mean `binary`? (expected one of: `binary`, `none`)"
        );
        assert_eq!(
            unknown("method", "zzzzzz", &["adapter", "lora", "prefix"]),
            "unknown method `zzzzzz` (expected one of: `adapter`, `lora`, `prefix`)"
        );
    }
}
