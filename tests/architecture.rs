//! The crate's shape, checked: the layers of `src/` import only downwards, no two modules
//! import each other (directly or through others), and no file of `src/` holds more than
//! [`MAX_CODE_LINES`] lines of non-test code. docs/architecture.md describes the layers.
//!
//! `cargo test --test architecture -- --nocapture` also prints every module with its size and
//! what it imports.
//!
//! The check reads the sources as text: every `crate::`, `super::` and `self::` path outside
//! comments and outside the test modules (a `#[cfg(test)] mod tests` block at the end of a
//! file, or a file `tests.rs`, which may use the test support of `testing`) is an import
//! of the module it names (the longest known module prefix; a name re-exported at the crate
//! root counts as its defining module). A `mod` declaration is not an import, so a module may
//! be split into children that extend its types, as long as the parent names nothing of theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest a file of `src/` may be, in lines of code before its test module (blank lines
/// and comments not counted).
const MAX_CODE_LINES: usize = 800;

/// Each layer with the layers it may import (besides itself); a module of no layer (the crate
/// root) may import anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("vocab", &[]),
    ("proto", &["vocab"]),
    ("net", &["proto", "vocab"]),
    ("app", &["net", "proto", "vocab"]),
    ("testing", &["app", "net", "proto", "vocab"]),
];

struct Module {
    file: PathBuf,
    /// The code outside comments and the trailing test module.
    code: String,
    code_lines: usize,
}

/// `crate`, `crate::net`, `crate::net::behaviour`, ...
fn module_path(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("a file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    std::iter::once("crate".to_string())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments, string literals' contents, and the test module at the end.
fn code_of(text: &str) -> (String, usize) {
    let mut code = String::new();
    let mut lines = 0;
    let mut in_block_comment = 0usize;
    let all: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < all.len() {
        let line = all[i];
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && all
                .get(i + 1)
                .is_some_and(|next| next.trim().starts_with("mod tests {"))
        {
            break;
        }
        let mut out = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut j = 0;
        let mut in_string = false;
        while j < chars.len() {
            let c = chars[j];
            let next = chars.get(j + 1).copied();
            if in_block_comment > 0 {
                if c == '*' && next == Some('/') {
                    in_block_comment -= 1;
                    j += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    in_block_comment += 1;
                    j += 2;
                    continue;
                }
                j += 1;
                continue;
            }
            if in_string {
                if c == '\\' {
                    j += 2;
                    continue;
                }
                if c == '"' {
                    in_string = false;
                    out.push(c);
                }
                j += 1;
                continue;
            }
            match (c, next) {
                ('/', Some('/')) => break,
                ('/', Some('*')) => {
                    in_block_comment += 1;
                    j += 2;
                    continue;
                }
                ('"', _) => {
                    in_string = true;
                    out.push(c);
                }
                // A char literal such as '"' must not open a string.
                ('\'', _) if chars.get(j + 2) == Some(&'\'') => {
                    j += 3;
                    continue;
                }
                _ => out.push(c),
            }
            j += 1;
        }
        if !out.trim().is_empty() {
            lines += 1;
        }
        code.push_str(&out);
        code.push('\n');
        i += 1;
    }
    (code, lines)
}

/// Every path that starts with `crate::`, `super::` or `self::` in `code`, use-trees expanded,
/// as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if boundary {
            for head in ["crate", "super", "self"] {
                let h: Vec<char> = head.chars().collect();
                if chars[i..].starts_with(&h) && chars[i + h.len()..].starts_with(&[':', ':']) {
                    let mut prefix = vec![head.to_string()];
                    let mut j = i + h.len() + 2;
                    parse_tree(&chars, &mut j, &mut prefix, &mut out);
                    i = j;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Parses `a::b::{c, d::e}` at `*j` (just past a `::`), pushing the full paths.
fn parse_tree(chars: &[char], j: &mut usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let skip_ws = |j: &mut usize| {
        while *j < chars.len() && chars[*j].is_whitespace() {
            *j += 1;
        }
    };
    skip_ws(j);
    if *j < chars.len() && chars[*j] == '{' {
        *j += 1;
        loop {
            skip_ws(j);
            if *j >= chars.len() || chars[*j] == '}' {
                *j += 1;
                break;
            }
            let mut inner = prefix.clone();
            parse_tree(chars, j, &mut inner, out);
            skip_ws(j);
            if *j < chars.len() && chars[*j] == ',' {
                *j += 1;
            }
        }
        return;
    }
    let start = *j;
    while *j < chars.len() && (chars[*j].is_alphanumeric() || chars[*j] == '_' || chars[*j] == '*')
    {
        *j += 1;
    }
    let segment: String = chars[start..*j].iter().collect();
    if segment.is_empty() {
        out.push(prefix.clone());
        return;
    }
    prefix.push(segment);
    if chars[*j..].starts_with(&[':', ':']) {
        *j += 2;
        parse_tree(chars, j, prefix, out);
    } else {
        out.push(prefix.clone());
    }
}

/// Paths through the child modules a file declares (`mod child;` then `child::Item`), as
/// segments relative to the file's module.
fn child_paths(code: &str) -> Vec<Vec<String>> {
    let children: Vec<String> = code
        .split(';')
        .filter_map(|s| {
            let s = s.trim();
            let name = s
                .rsplit_once("mod ")
                .map(|(head, name)| (head.trim(), name))?;
            let valid_head = name.0.is_empty()
                || name.0.ends_with(')')
                || name.0 == "pub"
                || name.0.ends_with(']');
            (valid_head && name.1.chars().all(|c| c.is_alphanumeric() || c == '_'))
                .then(|| name.1.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for child in children {
        let needle = format!("{child}::");
        for (at, _) in code.match_indices(&needle) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            out.push(vec!["self".to_string(), child.clone()]);
        }
    }
    out
}

/// The names the crate root re-exports, with the module that defines each.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let (code, _) = code_of(lib);
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement.strip_prefix("pub use ") else {
            continue;
        };
        if rest.starts_with("libp2p")
            || rest.starts_with("prometheus_client")
            || rest.starts_with("crate::")
        {
            continue;
        }
        let tree = format!("crate::{rest}");
        for path in paths(&tree) {
            if let Some((name, module)) = path.split_last() {
                names.insert(name.clone(), module.join("::"));
            }
        }
    }
    names
}

fn resolve(
    from: &str,
    path: &[String],
    modules: &BTreeSet<String>,
    root: &BTreeMap<String, String>,
) -> Option<String> {
    let mut absolute: Vec<String> = from.split("::").map(str::to_string).collect();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            absolute.truncate(1);
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                absolute.pop();
                rest = &rest[1..];
            }
        }
        // A path through a child module (`child::Item`).
        _ => {}
    }
    absolute.extend(rest.iter().cloned());
    if absolute.len() >= 2
        && absolute[0] == "crate"
        && let Some(module) = root.get(&absolute[1])
    {
        return Some(module.clone());
    }
    (1..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn layer(module: &str) -> Option<&'static str> {
    let top = module.split("::").nth(1)?;
    LAYERS.iter().map(|(l, _)| *l).find(|l| *l == top)
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let at = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node)
            && let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn layers_import_downwards_without_cycles_in_files_of_bounded_size() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeMap::new();
    for file in &files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(file).expect("readable source");
        let (code, code_lines) = code_of(&text);
        modules.insert(
            module_path(&src, file),
            Module {
                file: file.clone(),
                code,
                code_lines,
            },
        );
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let root = root_reexports(&fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs"));

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, module) in &modules {
        let imports = graph.entry(name.clone()).or_default();
        for path in paths(&module.code)
            .into_iter()
            .chain(child_paths(&module.code))
        {
            let Some(target) = resolve(name, &path, &names, &root) else {
                continue;
            };
            if target != *name {
                imports.insert(target);
            }
        }
        if module.code_lines > MAX_CODE_LINES {
            problems.push(format!(
                "{} has {} lines of code (at most {MAX_CODE_LINES})",
                module.file.display(),
                module.code_lines
            ));
        }
    }
    for (name, imports) in &graph {
        let Some(from) = layer(name) else { continue };
        let allowed = LAYERS
            .iter()
            .find(|(l, _)| *l == from)
            .map(|(_, a)| *a)
            .unwrap_or(&[]);
        for target in imports {
            match layer(target) {
                Some(to) if to == from || allowed.contains(&to) => {}
                Some(to) => problems.push(format!(
                    "{name} (layer {from}) imports {target} (layer {to})"
                )),
                None if target == "crate" => {
                    problems.push(format!("{name} imports the crate root"))
                }
                None => {}
            }
        }
    }
    // The crate root re-exports everything and is imported by nobody: leave it out.
    let inner: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .filter(|(n, _)| *n != "crate")
        .map(|(n, i)| {
            (
                n.clone(),
                i.iter().filter(|t| *t != "crate").cloned().collect(),
            )
        })
        .collect();
    // Report every cycle, one at a time: find one, report it, cut its last edge, repeat.
    let mut remaining = inner.clone();
    while let Some(cycle) = find_cycle(&remaining) {
        problems.push(format!("a cycle of imports: {}", cycle.join(" -> ")));
        let (from, to) = (&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]);
        if let Some(edges) = remaining.get_mut(from) {
            edges.remove(to);
        }
    }

    for (name, module) in &modules {
        let imports: Vec<&str> = graph[name]
            .iter()
            .map(|t| t.strip_prefix("crate::").unwrap_or(t))
            .collect();
        println!(
            "{:<34} {:>4} lines  imports: {}",
            name.strip_prefix("crate::").unwrap_or(name),
            module.code_lines,
            imports.join(", ")
        );
    }
    assert!(
        problems.is_empty(),
        "the crate's shape:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_imports_trees_and_cycles() {
    let code = "use crate::a::{b::C, d};\nfn f() { super::e::F::new(); }\n// crate::commented\n";
    let (code, lines) = code_of(code);
    assert_eq!(lines, 2);
    // A test module declared at the top does not hide the code below it; one at the end does.
    let (_, lines) =
        code_of("#[cfg(test)]\nmod tests;\nfn a() {}\n#[cfg(test)]\nmod tests {\nfn b() {}\n}\n");
    assert_eq!(lines, 3);
    let found = paths(&code);
    assert!(found.contains(&vec!["crate".into(), "a".into(), "b".into(), "C".into()]));
    assert!(found.contains(&vec!["crate".into(), "a".into(), "d".into()]));
    assert!(found.contains(&vec!["super".into(), "e".into(), "F".into(), "new".into()]));
    assert_eq!(found.len(), 3, "{found:?}");
    let (parent, _) =
        code_of("mod child;\npub(crate) mod other;\nfn f() -> child::T { other::g() }\n");
    assert_eq!(child_paths(&parent).len(), 2);

    let modules: BTreeSet<String> = [
        "crate",
        "crate::a",
        "crate::a::b",
        "crate::x",
        "crate::x::y",
    ]
    .map(String::from)
    .into();
    let none = BTreeMap::new();
    let from_y = |p: &[&str]| {
        let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
        resolve("crate::x::y", &p, &modules, &none)
    };
    assert_eq!(
        from_y(&["crate", "a", "b", "C"]).as_deref(),
        Some("crate::a::b")
    );
    assert_eq!(from_y(&["super", "Thing"]).as_deref(), Some("crate::x"));
    assert_eq!(
        from_y(&["super", "super", "a", "T"]).as_deref(),
        Some("crate::a")
    );

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
