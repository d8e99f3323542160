//! Sync pages: a state cut into pages under a size, and pages put back together.

use crate::proto::messages::{SyncGroup, SyncMember};

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
    let mut pages = vec![Vec::new()];
    let mut size = 0;
    for group in groups {
        let head = 16 + group.name.len();
        // Members cut so that each chunk (with the group's name) fits a page alone.
        let mut chunks: Vec<Vec<SyncMember>> = vec![Vec::new()];
        let mut chunk_bytes = head;
        for member in group.members {
            let bytes = member_bytes(&member);
            if chunk_bytes + bytes > page_bytes && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                chunk_bytes = head;
            }
            chunk_bytes += bytes;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(member);
            }
        }
        for members in chunks {
            let bytes = head + members.iter().map(member_bytes).sum::<usize>();
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

/// A generous estimate of a member's encoded size.
fn member_bytes(member: &SyncMember) -> usize {
    14 + member.meta.as_ref().map_or(0, |m| m.len() + 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, members: u64) -> SyncGroup {
        SyncGroup {
            name: name.into(),
            // Every third member with metadata, which counts toward the page's size.
            members: (1..=members)
                .map(|id| SyncMember {
                    id,
                    slots: 1,
                    meta: (id % 3 == 0).then(|| bytes::Bytes::from(vec![7u8; 40])),
                })
                .collect(),
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
            let mut encoded = Vec::new();
            ciborium::into_writer(page, &mut encoded).unwrap();
            assert!(encoded.len() <= 4096, "page of {} bytes", encoded.len());
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
