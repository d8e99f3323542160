//! Sync pages: a state cut into pages under a size, and pages put back together.

use crate::proto::messages::SyncGroup;

/// Appends a page to the groups of the pages before it: a group too big for one page
/// continues on the next.
pub(crate) fn append_page(groups: &mut Vec<SyncGroup>, page: Vec<SyncGroup>) {
    for g in page {
        match groups.last_mut() {
            Some(last) if last.name == g.name => last.members.extend(g.members),
            _ => groups.push(g),
        }
    }
}

/// Cuts a state into pages of about `page_bytes` each (a group is never split unless it alone
/// is bigger, in which case its members are). Always at least one page.
pub(crate) fn paginate(groups: Vec<SyncGroup>, page_bytes: usize) -> Vec<Vec<SyncGroup>> {
    const MEMBER_BYTES: usize = 14;
    let mut pages = vec![Vec::new()];
    let mut size = 0;
    for group in groups {
        let per_member_cap =
            (page_bytes.saturating_sub(16 + group.name.len()) / MEMBER_BYTES).max(1);
        let chunks: Vec<Vec<(u64, u32)>> = if group.members.len() > per_member_cap {
            group
                .members
                .chunks(per_member_cap)
                .map(<[_]>::to_vec)
                .collect()
        } else {
            vec![group.members]
        };
        for members in chunks {
            let bytes = 16 + group.name.len() + MEMBER_BYTES * members.len();
            if size + bytes > page_bytes && !pages.last().is_some_and(Vec::is_empty) {
                pages.push(Vec::new());
                size = 0;
            }
            size += bytes;
            if let Some(page) = pages.last_mut() {
                page.push(SyncGroup {
                    name: group.name.clone(),
                    members,
                });
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, members: u64) -> SyncGroup {
        SyncGroup {
            name: name.into(),
            members: (1..=members).map(|id| (id, 1)).collect(),
        }
    }

    #[test]
    fn pages_stay_under_the_size_and_reassemble_to_the_same_state() {
        let groups: Vec<SyncGroup> = (0..50)
            .map(|i| group(&format!("g{i}"), i * 7))
            .chain([group("huge", 5000)])
            .filter(|g| !g.members.is_empty())
            .collect();
        let pages = paginate(groups.clone(), 4096);
        assert!(pages.len() > 10, "{} pages", pages.len());
        for page in &pages {
            let bytes: usize = page
                .iter()
                .map(|g| 16 + g.name.len() + 14 * g.members.len())
                .sum();
            assert!(bytes <= 4096, "page of {bytes} bytes");
        }
        let mut back = Vec::new();
        for page in pages {
            append_page(&mut back, page);
        }
        assert_eq!(back, groups);
    }

    #[test]
    fn an_empty_state_is_one_empty_page() {
        assert_eq!(paginate(Vec::new(), 4096), vec![Vec::<SyncGroup>::new()]);
    }
}
