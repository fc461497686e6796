//! The real sentiment sources of the main job (fetched by `scripts/fetch-assets.sh`): Rotten
//! Tomatoes sentences (classification) and VADER's movie snippets (regression), and the seeded
//! 80/10/10 hash split.

use std::path::PathBuf;

use propetl::data::{hash_split, load_rotten_tomatoes, load_vader_movies};

fn asset(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/sentiment")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        p.display()
    );
    p
}

#[test]
fn rotten_tomatoes_sentences_load_deduplicated_and_split() {
    let all = load_rotten_tomatoes(&asset("rotten_tomatoes_corpus_full.csv")).unwrap();
    // fresh/rotten only, plot rows dropped, duplicates removed: ~12.8k sentences
    assert!((12_000..13_500).contains(&all.len()), "{}", all.len());
    let fresh = all.iter().filter(|e| e.label == 1.0).count();
    assert!(
        fresh > all.len() / 3 && fresh < 2 * all.len() / 3,
        "{fresh} of {}",
        all.len()
    );
    let mut texts: Vec<&str> = all.iter().map(|e| e.text_a.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), all.len());
    // quoted fields with newlines were parsed as single fields (no stray category values)
    assert!(all.iter().all(|e| e.label == 0.0 || e.label == 1.0));
    let n = all.len() as f64;
    let s = hash_split(all, 42);
    let frac = |k: usize| k as f64 / n;
    assert!(
        (frac(s.train.len()) - 0.8).abs() < 0.02
            && (frac(s.eval.len()) - 0.1).abs() < 0.02
            && (frac(s.test.len()) - 0.1).abs() < 0.02
    );
    // the split of a sentence depends only on its text
    let again = hash_split(
        load_rotten_tomatoes(&asset("rotten_tomatoes_corpus_full.csv")).unwrap(),
        42,
    );
    assert_eq!(again.test, s.test);
}

#[test]
fn vader_movie_snippets_are_a_regression_task() {
    let all = load_vader_movies(&asset("movieReviewSnippets_GroundTruth.txt")).unwrap();
    assert!((10_000..11_000).contains(&all.len()), "{}", all.len());
    assert!(all.iter().all(|e| (-4.0..=4.0).contains(&e.label)));
    assert!(all.iter().any(|e| e.label > 3.0) && all.iter().any(|e| e.label < -3.0));
    assert!(all.iter().all(|e| !e.text_a.ends_with('\r')));
    assert_eq!(all[2].text_a, "Effective but too tepid biopic");
    assert!((all[2].label + 0.6).abs() < 1e-6);
}
