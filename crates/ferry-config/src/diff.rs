//! A line diff in the unified format (`---`/`+++` header, `@@` hunks with three lines of
//! context), for the audit trail's record of what a configuration change did to a channel.
//!
//! Channel sections are small, so this is the plain longest-common-subsequence table; inputs
//! too large for it (more than [`MAX_CELLS`] line pairs) are shown as all lines removed and
//! all lines added, which is still correct, only less precise.

use std::fmt::Write as _;

/// Most line pairs compared with the LCS table (4 MiB of `u32`s per million cells).
pub const MAX_CELLS: usize = 1_000_000;

/// Lines of context around each change.
const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Keep,
    Remove,
    Add,
}

/// The unified diff from `old` (labelled `old_label`) to `new`; empty when they are equal.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let edits = edits(&a, &b);
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Position of each edit in `a` and `b` before it applies.
    let mut positions = Vec::with_capacity(edits.len());
    let (mut i, mut j) = (0, 0);
    for e in &edits {
        positions.push((i, j));
        match e {
            Edit::Keep => {
                i += 1;
                j += 1;
            }
            Edit::Remove => i += 1,
            Edit::Add => j += 1,
        }
    }
    let changed: Vec<usize> = (0..edits.len())
        .filter(|&k| edits[k] != Edit::Keep)
        .collect();
    let mut k = 0;
    while k < changed.len() {
        // Grow the hunk while the next change is within twice the context.
        let start = changed[k].saturating_sub(CONTEXT);
        let mut last = changed[k];
        while k + 1 < changed.len() && changed[k + 1] - last <= 2 * CONTEXT {
            k += 1;
            last = changed[k];
        }
        let end = (last + CONTEXT + 1).min(edits.len());
        let (a0, b0) = positions[start];
        let count = |kind: Edit| {
            edits[start..end]
                .iter()
                .filter(|e| **e == Edit::Keep || **e == kind)
                .count()
        };
        let (na, nb) = (count(Edit::Remove), count(Edit::Add));
        let _ = writeln!(
            out,
            "@@ -{},{na} +{},{nb} @@",
            a0 + usize::from(na > 0),
            b0 + usize::from(nb > 0)
        );
        for (e, (i, j)) in edits[start..end].iter().zip(&positions[start..end]) {
            let (mark, line) = match e {
                Edit::Keep => (' ', a.get(*i)),
                Edit::Remove => ('-', a.get(*i)),
                Edit::Add => ('+', b.get(*j)),
            };
            let _ = writeln!(out, "{mark}{}", line.copied().unwrap_or_default());
        }
        k += 1;
    }
    out
}

/// The shortest edit script from `a` to `b` (by longest common subsequence).
fn edits(a: &[&str], b: &[&str]) -> Vec<Edit> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let mut all = vec![Edit::Remove; n];
        all.extend(std::iter::repeat_n(Edit::Add, m));
        return all;
    }
    // lcs[i * (m + 1) + j]: length of the LCS of a[i..] and b[j..].
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let mut out = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Keep);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
            // Removals first, as `diff -u` writes them.
            out.push(Edit::Remove);
            i += 1;
        } else {
            out.push(Edit::Add);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn a_changed_line_is_one_hunk_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified(old, new, "deployed", "ferry.toml"),
            "--- deployed\n+++ ferry.toml\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn additions_and_far_apart_changes() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("\n2\n", "\n2\nnew\n").replace("19\n", "");
        let diff = unified(&old, &new, "a", "b");
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(diff.contains("\n+new\n"), "{diff}");
        assert!(diff.contains("\n-19\n"), "{diff}");
        // From nothing: every line added.
        let created = unified("", "x\ny\n", "a", "b");
        assert_eq!(created, "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+x\n+y\n");
    }

    #[test]
    fn oversized_inputs_are_replaced_whole() {
        let old: String = (0..1200).map(|i| format!("o{i}\n")).collect();
        let new: String = (0..1200).map(|i| format!("n{i}\n")).collect();
        let diff = unified(&old, &new, "a", "b");
        assert_eq!(diff.lines().filter(|l| l.starts_with('-')).count(), 1201);
        assert_eq!(diff.lines().filter(|l| l.starts_with('+')).count(), 1201);
    }
}
