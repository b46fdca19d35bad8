//! The fixed naming rules that tie Rust names to manifest names and generated items.
//!
//! `fn co_mutex_test` ↔ `kCoMutexTest` (manifest) ↔ `CO_MUTEX_TEST` (method id const) ↔
//! `CoMutexTest` (wire type prefix and enum variant); `struct ModName` ↔ `ModNameClient`
//! and `mod mod_name_tasks`. Every function is pure and works on the *unraw* name
//! (`r#type` is `type`), so raw identifiers map like any other.

/// The name of `ident` without a leading `r#`.
pub(crate) fn unraw(ident: &proc_macro2::Ident) -> String {
    let name = ident.to_string();
    match name.strip_prefix("r#") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
}

/// `co_mutex_test` → `CoMutexTest`.
pub(crate) fn upper_camel(snake: &str) -> String {
    snake
        .split('_')
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

/// `ModName` → `mod_name`, `HTTPServer` → `http_server`.
pub(crate) fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let word_start = match prev {
                None | Some('_') => false,
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) => p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()),
            };
            if word_start {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `co_mutex_test` → `CO_MUTEX_TEST`.
pub(crate) fn screaming_snake(snake: &str) -> String {
    snake.to_ascii_uppercase()
}

/// The manifest entry of a task function: `co_mutex_test` → `kCoMutexTest`.
pub(crate) fn manifest_entry(fn_name: &str) -> String {
    format!("k{}", upper_camel(fn_name))
}

/// The function a manifest entry names: `kCoMutexTest` → `co_mutex_test`.
pub(crate) fn function_of_entry(entry: &str) -> String {
    snake_case(entry.strip_prefix('k').unwrap_or(entry))
}

/// The typed client of a chimod struct: `ModName` → `ModNameClient`.
pub(crate) fn client_type(struct_name: &str) -> String {
    format!("{struct_name}Client")
}

/// The module of method ids and wire types: `ModName` → `mod_name_tasks`.
pub(crate) fn tasks_module(struct_name: &str) -> String {
    format!("{}_tasks", snake_case(struct_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_map_to_manifest_entries_and_back() {
        for (function, entry) in [
            ("create", "kCreate"),
            ("custom", "kCustom"),
            ("co_rw_lock_test", "kCoRwLockTest"),
            ("get_or_create_pool", "kGetOrCreatePool"),
            ("node_failure", "kNodeFailure"),
        ] {
            assert_eq!(manifest_entry(function), entry);
            assert_eq!(function_of_entry(entry), function);
        }
    }

    #[test]
    fn struct_names_map_to_generated_items() {
        assert_eq!(client_type("ModName"), "ModNameClient");
        assert_eq!(tasks_module("ModName"), "mod_name_tasks");
        assert_eq!(tasks_module("Admin"), "admin_tasks");
        assert_eq!(tasks_module("HTTPServer"), "http_server_tasks");
        assert_eq!(tasks_module("Mod2Name"), "mod2_name_tasks");
    }

    #[test]
    fn raw_identifiers_lose_their_prefix() {
        let raw = proc_macro2::Ident::new_raw("type", proc_macro2::Span::call_site());
        assert_eq!(unraw(&raw), "type");
        assert_eq!(screaming_snake(&unraw(&raw)), "TYPE");
        assert_eq!(upper_camel(&unraw(&raw)), "Type");
    }
}
