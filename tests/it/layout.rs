//! The code's layout: no file of `src/` imports another that imports it back,
//! however long the loop (`ARCHITECTURE.md`'s "Data flows one way").
//!
//! A file's imports are the `crate::` and `super::` paths it names outside its
//! `#[cfg(test)]` module (`use` lines and paths in code alike), each resolved to
//! the file of the longest module it names: `crate::store::Item` is
//! `src/store/mod.rs`, `crate::store::lock::gone_here` is `src/store/lock.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path: `src/store/mod.rs` is `["store"]`, `src/lib.rs` is `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file of the longest module that `path` names.
fn resolve(src: &Path, path: &[String]) -> Option<PathBuf> {
    (0..=path.len()).rev().find_map(|n| {
        let base = path[..n].iter().fold(src.to_path_buf(), |p, s| p.join(s));
        let candidates = if n == 0 {
            vec![src.join("lib.rs")]
        } else {
            vec![base.with_extension("rs"), base.join("mod.rs")]
        };
        candidates.into_iter().find(|c| c.is_file())
    })
}

/// Splits `a, b::{c, d}, e` at its top-level commas.
fn split_top(list: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// The paths `text` (what follows `crate::` or `super::`) names, with `prefix`
/// before each: `{a::B, c}` is two paths.
fn paths(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 1;
        let end = group
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(group.len(), |(i, _)| i);
        for part in split_top(&group[..end]) {
            paths(prefix, part, out);
        }
        return;
    }
    let mut path = prefix.to_vec();
    let mut rest = text;
    loop {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        path.push(name.clone());
        rest = &rest[name.len()..];
        match rest.strip_prefix("::") {
            Some(after) if after.starts_with('{') => return paths(&path, after, out),
            Some(after) => rest = after,
            None => break,
        }
    }
    out.push(path);
}

/// The files of `src/` each file imports.
fn imports(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut graph = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let module = module_of(src, &file);
        // `super` of `src/a/b.rs` is `a`; of `src/a/b/mod.rs`, also `a`.
        let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
        let mut named = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            paths(&[], &code[i + "crate::".len()..], &mut named);
        }
        for (i, _) in code.match_indices("super::") {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::` is counted from its first `super`
            }
            let mut base = parent.clone();
            let mut rest = &code[i + "super::".len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            paths(&base, rest, &mut named);
        }
        let deps = named
            .iter()
            .filter_map(|p| resolve(src, p))
            .filter(|d| *d != file)
            .collect();
        graph.insert(file, deps);
    }
    graph
}

/// One loop of imports, if there is any (a depth-first search's back edge).
fn find_loop(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_of_src_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    // The check sees imports: a known arrow must be there.
    let engine = src.join("engine/mod.rs");
    assert!(
        graph[&engine].contains(&src.join("pacer/mod.rs")),
        "engine imports the pacer: {:?}",
        graph[&engine]
    );
    if let Some(cycle) = find_loop(&graph) {
        let names: Vec<String> = cycle
            .iter()
            .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
            .collect();
        panic!("an import loop: {}", names.join(" -> "));
    }
}

#[test]
fn the_loop_finder_finds_a_loop() {
    let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
    let mut graph = BTreeMap::new();
    graph.insert(a.clone(), BTreeSet::from([b.clone()]));
    graph.insert(b.clone(), BTreeSet::from([c.clone()]));
    graph.insert(c.clone(), BTreeSet::new());
    assert_eq!(find_loop(&graph), None);
    graph.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(find_loop(&graph), Some(vec![a.clone(), b, c, a]));
}

/// The functions of a file as (name, first line, lines): a function begins at a
/// line that declares it (`fn`, after `pub`, `async`, `const`, `unsafe`) and
/// ends at the first line that is its own indentation and `}` (rustfmt's form).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let mut words = body.split_whitespace().peekable();
        while words
            .peek()
            .is_some_and(|w| w.starts_with("pub") || ["async", "const", "unsafe"].contains(w))
        {
            words.next();
        }
        if words.next() != Some("fn") || line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = words
            .next()
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if body.contains('{') && body.ends_with('}') {
            found.push((name, i + 1, 1));
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (i + 1..lines.len()).find(|&j| lines[j] == close) {
            found.push((name, i + 1, end - i + 1));
        }
    }
    found
}

#[test]
fn no_function_of_src_is_over_100_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (name, line, lines) in functions(&text) {
            seen += 1;
            if lines > 100 {
                let at = file.strip_prefix(&src).unwrap().display();
                long.push(format!("{at}:{line} {name}: {lines} lines"));
            }
        }
    }
    assert!(seen > 500, "the check finds the functions: {seen}");
    assert!(
        long.is_empty(),
        "functions over 100 lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_finder_measures_a_function() {
    let text = "impl A {\n    pub(crate) async fn go(&self) {\n        if x {\n        }\n    }\n    fn decl();\n}\nfn two() {}\nfn three() {\n}\n";
    assert_eq!(
        functions(text),
        [
            ("go".to_owned(), 2, 4),
            ("two".to_owned(), 8, 1),
            ("three".to_owned(), 9, 2)
        ]
    );
}
