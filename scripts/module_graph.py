#!/usr/bin/env python3
"""The import graph of a crate's top-level modules, from its `crate::` paths; fails on a cycle.

Usage: module_graph.py [SRC_DIR] [--dot]

Reads every .rs file under SRC_DIR (default crates/learning-chat/src), skips comments, string literals
and `#[cfg(test)]` modules, and records an edge A -> B for each `crate::B` path in a file of the
top-level module A (`use crate::{b, c::d}` groups included). Edges inside one top-level module
are not counted: a parent and its children are one unit. Prints the edges in dependency order
(a module after every module it imports) and exits 1 naming each cycle, if there is one.

Dependency-free on purpose, so CI runs it without installing anything; `cargo modules
dependencies --acyclic` (scripts/check-module-cycles.sh) gives the same verdict when installed.
"""

import os
import re
import sys


def strip_comments_and_strings(text):
    """The source with comments and string/char literals blanked (line breaks kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif c == "r" and re.match(r'r(#*)"', text[i:i + 10]) and not (
            i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            hashes = re.match(r'r(#*)"', text[i:i + 10]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append("\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += len(re.match(r"'(\\.|[^\\'])'", text[i:i + 4]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(text):
    """The source without `#[cfg(test)] mod name { ... }` blocks."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[: m.start()] + text[i:]


def crate_targets(text):
    """The top-level modules named by `crate::` paths, including `crate::{a, b::c}` groups."""
    targets = set()
    for m in re.finditer(r"\bcrate\s*::\s*(\{|\w+)", text):
        if m.group(1) != "{":
            targets.add(m.group(1))
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        group = text[m.end(): i - 1]
        # Only the first segment of each item at the group's top level names a module.
        level, item = 0, ""
        for ch in group + ",":
            if ch == "{":
                level += 1
            elif ch == "}":
                level -= 1
            if ch == "," and level == 0:
                first = re.match(r"\s*(\w+)", item)
                if first:
                    targets.add(first.group(1))
                item = ""
            elif level == 0:
                item += ch
    return targets


def module_of(src, path):
    """The top-level module a file belongs to (`lib`/`main` for the crate roots)."""
    rel = os.path.relpath(path, src).replace(os.sep, "/")
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".rs") else first


def graph(src):
    """Edges between top-level modules, and the set of modules."""
    edges, modules = {}, set()
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            module = module_of(src, path)
            if module in ("lib", "main"):
                continue
            modules.add(module)
            with open(path, encoding="utf-8") as f:
                text = drop_test_modules(strip_comments_and_strings(f.read()))
            for target in crate_targets(text):
                if target != module:
                    edges.setdefault(module, set()).add(target)
    # `crate::trace_span!` and other exported macros live at the root, not in a module.
    for module in edges:
        edges[module] &= modules
    return modules, edges


def cycles(modules, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


def layers(modules, edges):
    """Modules in dependency order: leaves first (assumes no cycle)."""
    order, done = [], set()

    def visit(v):
        if v in done:
            return
        done.add(v)
        for w in sorted(edges.get(v, ())):
            visit(w)
        order.append(v)

    for v in sorted(modules):
        visit(v)
    return order


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else "crates/learning-chat/src"
    modules, edges = graph(src)
    if "--dot" in sys.argv:
        print("digraph modules {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
    found = cycles(modules, edges)
    if found:
        for component in found:
            inside = [f"{a} -> {b}" for a in component for b in sorted(edges.get(a, ())) if b in component]
            print(f"CYCLE between {{{', '.join(component)}}}: {'; '.join(inside)}", file=sys.stderr)
        return 1
    if "--dot" not in sys.argv:
        for module in layers(modules, edges):
            uses = ", ".join(sorted(edges.get(module, ()))) or "(leaf)"
            print(f"{module:<14} -> {uses}")
        print(f"no cycles among {len(modules)} top-level modules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
