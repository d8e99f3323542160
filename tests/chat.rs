//! The chat example (`examples/chat/`) as its users run it: each user is an OS process of
//! the example's binary; the tests write commands to their stdin and read their stdout.
//!
//! - Over loopback, with mDNS off and explicit dials: a room line crosses, `/who` and
//!   `/rooms` list everyone, `/msg` reaches its target only, joins and leaves of rooms show at
//!   the others, nicks are unique (at start and on `/nick`), a scope file without the chat's
//!   scopes is refused, and quitting (end of input, Ctrl-C, `/quit`) shows as a leave at the
//!   others at once (the goodbye), well before `node_down_grace`. Nicks are shown as typed
//!   but held under their key: `ALICE`, fullwidth `ａlice` and `аlice` with a Cyrillic `а` are
//!   refused while alice holds hers, and `/msg ALICE` reaches her. Two chats that take one
//!   nick at the same instant: one keeps it, the other is told and takes a fresh one, and
//!   every chat shows distinct nicks; `/who` shows each member's nick and when it joined.
//! - A line over the chat's `MAX_LINE_BYTES` is refused whole, with a message, in a pipe as in
//!   a terminal: nothing of it reaches the others.
//! - In a terminal (tmux, `support::tmux`): the prompt names the current room, lines that
//!   arrive while the user types show above the line being typed and leave it intact, a line
//!   said shows once (as the others see it, not also as typed), the up key brings the last
//!   line back, and Ctrl-D leaves.
//! - On a LAN of three network namespaces (see `support::netns`), with mDNS on and nothing to
//!   dial: the users find each other by mDNS alone, and the same checks pass. Run as root,
//!   these tests make the namespaces themselves; run by anyone else, they run inside a user
//!   namespace (`support::netns::as_root`).
//!
//! The users, the chat binary and the conversation every test checks are
//! `support::chat`'s (shared with `wan.rs`, which runs the chat across networks). mDNS only
//! ever runs inside a namespace made by the test (`Place::Host`); over loopback
//! (`Place::Loopback`) `--no-mdns` is always added.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::chat::{
    LIMIT, MAX_LINE_BYTES, PROMPT, Place, User, WAIT, chat_binary, converse, strs, who_nicks,
};
use support::netns::{Lan, as_root};
use support::tmux::Tmux;

#[test]
fn three_users_over_loopback() {
    let started = Instant::now();
    let local = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut alice = User::join("alice", &local, Place::Loopback);
    let first = alice.addrs[0].clone();
    assert!(
        first.starts_with("/ip4/127.0.0.1/tcp/") && first.contains("/p2p/"),
        "alice's address {first:?}"
    );
    let dial = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = local.iter().map(|s| s.to_string()).collect();
        args.extend(["--dial".to_owned(), first.clone()]);
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let bob_args = dial(&[]);
    let mut bob = User::join("bob", &strs(&bob_args), Place::Loopback);
    // carol reads her scopes from the example's file.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/procgroups.toml");
    let carol_args = dial(&["--config", config.to_str().expect("a UTF-8 path")]);
    let mut carol = User::join("carol", &strs(&carol_args), Place::Loopback);
    eprintln!("three users ready in {:?}", started.elapsed());

    // A nick that is taken: refused at start (the chat waits for the peer it dials)...
    let mut impostor = User::start("alice", &strs(&dial(&[])), Place::Loopback);
    let status = impostor.wait_exit();
    assert!(!status.success(), "a second alice started");
    assert!(
        impostor.printed("[stderr] ! the nick alice is taken"),
        "no clear error for a taken nick"
    );
    drop(impostor);
    // ... and so is a nick that reads like it: `аlice` with a Cyrillic `а`.
    let mut look_alike = User::start("\u{430}lice", &strs(&dial(&[])), Place::Loopback);
    let status = look_alike.wait_exit();
    assert!(!status.success(), "a look-alike of alice started");
    assert!(
        look_alike.printed("[stderr] ! the nick \u{430}lice is taken (it reads like alice)"),
        "no clear error for a look-alike nick"
    );
    drop(look_alike);

    // ... and on /nick, which keeps the old nick; in any case, or fullwidth.
    let mark = bob.mark();
    bob.send("/nick alice");
    bob.expect(mark, "! the nick alice is taken; you are still bob");
    bob.send("/nick ALICE");
    bob.expect(
        mark,
        "! the nick ALICE is taken (it reads like alice); you are still bob",
    );
    bob.send("/nick \u{ff41}lice");
    bob.expect(
        mark,
        "! the nick \u{ff41}lice is taken (it reads like alice); you are still bob",
    );
    // A direct message to a nick written otherwise reaches its holder, shown as it took it.
    let alice_mark = alice.mark();
    bob.send("/msg ALICE psst");
    bob.expect(mark, "[dm -> alice] <bob> psst");
    alice.expect(alice_mark, "[dm] <bob> psst");

    // A scope file without the chat's scopes is refused with a clear message.
    let dir = std::env::temp_dir().join(format!("procgroups-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let partial = dir.join("rooms-only.toml");
    std::fs::write(
        &partial,
        "namespace = \"chat\"\n[[entries]]\nname = \"rooms\"\nkind = \"pg.scope\"\n",
    )
    .expect("write a scope file");
    let mut misconfigured = User::start(
        "dave",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--config",
            partial.to_str().expect("a UTF-8 path"),
        ],
        Place::Loopback,
    );
    let status = misconfigured.wait_exit();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
    assert!(!status.success(), "the chat ran without chat:users");
    assert!(
        misconfigured.printed("defines no scope chat:users"),
        "no clear error for a missing scope"
    );
    drop(misconfigured);

    // A line over the limit is refused whole; nothing of it reaches the others.
    let (alice_mark, bob_mark) = (alice.mark(), bob.mark());
    let long = "y".repeat(MAX_LINE_BYTES + 904);
    bob.send(&long);
    bob.expect(
        bob_mark,
        &format!(
            "! a line has at most {MAX_LINE_BYTES} bytes; this one has {}: not sent",
            long.len()
        ),
    );
    let fits = "z".repeat(MAX_LINE_BYTES - "/msg alice ".len());
    bob.send(&format!("/msg alice {fits}"));
    alice.expect(alice_mark, &format!("[dm] <bob> {fits}"));
    bob.send("after the long line");
    alice.expect(alice_mark, "[lobby] <bob> after the long line");
    assert!(!alice.printed("yyyy"), "a part of the refused line arrived");

    converse(&mut alice, &mut bob, &mut carol);

    // bob renames himself: to his own nick written otherwise (shown as typed), then to
    // another; the others follow.
    let (alice_mark, bob_mark) = (alice.mark(), bob.mark());
    bob.send("/nick Bob");
    bob.expect(bob_mark, "* you are now Bob");
    alice.expect(alice_mark, "* bob is now known as Bob");
    alice.who_until("lobby", &["Bob", "alice"]);
    let (alice_mark, bob_mark) = (alice.mark(), bob.mark());
    bob.send("/nick robert");
    bob.expect(bob_mark, "* you are now robert");
    alice.expect(alice_mark, "* Bob is now known as robert");
    alice.who_until("lobby", &["alice", "robert"]);
    bob.who_until("lobby", &["alice", "robert"]);

    // bob quits by Ctrl-C, alice by /quit.
    let mark = alice.mark();
    let quit = Instant::now();
    bob.interrupt();
    alice.expect(mark, "* robert left lobby");
    let took = quit.elapsed();
    assert!(took < PROMPT, "robert's leave took {took:?} to show");
    let status = bob.wait_exit();
    assert!(status.success(), "bob exited with {status} after Ctrl-C");
    alice.send("/quit");
    let status = alice.wait_exit();
    assert!(status.success(), "alice exited with {status} after /quit");
    eprintln!("whole test {:?}", started.elapsed());
}

#[test]
fn three_users_on_a_lan_find_each_other_by_mdns_alone() {
    chat_binary(); // built by this process, not inside the user namespace (see as_root)
    as_root(
        "three_users_on_a_lan_find_each_other_by_mdns_alone",
        LIMIT,
        three_users_on_a_lan,
    );
}

fn three_users_on_a_lan() {
    let started = Instant::now();
    let lan = Lan::create(3); // deletes the namespaces of dead earlier runs
    eprintln!("namespaces ready in {:?}", started.elapsed());
    {
        // Declared after the LAN: the users are killed before their namespaces go.
        let mut users: Vec<User> = ["alice", "bob", "carol"]
            .iter()
            .zip(&lan.hosts)
            .map(|(nick, ns)| User::start(nick, &[], Place::Host(&lan, ns)))
            .collect();
        for user in &users {
            let ready = format!("* {} is in lobby", user.nick);
            user.wait_for(0, "its ready line", |l| l == ready);
            assert!(
                user.printed("* listening on /ip4/10.77.0."),
                "{}: not listening on the LAN",
                user.nick
            );
        }
        eprintln!("three users ready in {:?}", started.elapsed());
        let [alice, bob, carol] = &mut users[..] else {
            unreachable!("three users")
        };
        converse(alice, bob, carol);
        for user in [&mut *alice, &mut *bob] {
            user.send("/quit");
            let status = user.wait_exit();
            assert!(status.success(), "{} exited with {status}", user.nick);
        }
        eprintln!("whole conversation {:?}", started.elapsed());
    }
    lan.delete();
}

/// The README's first command in three terminals of one machine: three chats on one host
/// (one network namespace with one LAN interface; mDNS ignores loopback) find each other by
/// mDNS with no flags.
#[test]
fn three_users_on_one_host_find_each_other_by_mdns_alone() {
    chat_binary();
    as_root(
        "three_users_on_one_host_find_each_other_by_mdns_alone",
        LIMIT,
        three_users_on_one_host,
    );
}

fn three_users_on_one_host() {
    let lan = Lan::create(1);
    {
        let host = &lan.hosts[0];
        let mut users: Vec<User> = ["alice", "bob", "carol"]
            .iter()
            .map(|nick| User::start(nick, &[], Place::Host(&lan, host)))
            .collect();
        for user in &users {
            let ready = format!("* {} is in lobby", user.nick);
            user.wait_for(0, "its ready line", |l| l == ready);
        }
        let [alice, bob, carol] = &mut users[..] else {
            unreachable!("three users")
        };
        converse(alice, bob, carol);
    }
    lan.delete();
}

/// The chat in a terminal of 120 x 30: alice in tmux, bob in a pipe, over loopback.
#[test]
fn a_chat_in_a_terminal_keeps_the_line_being_typed() {
    let local = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut bob = User::join("bob", &local, Place::Loopback);
    let dial = bob.addrs[0].clone();
    let bin = chat_binary();
    let alice = Tmux::start(
        "alice",
        120,
        30,
        &bin,
        &[
            "--nick",
            "alice",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--dial",
            &dial,
        ],
    );
    // The prompt names the room (capture-pane drops its trailing space).
    alice.wait("alice in the lobby, behind its prompt", |s| {
        s.find("* alice is in lobby").is_some() && s.last_row() == "[lobby]>"
    });
    bob.who_until("lobby", &["alice", "bob"]);

    // Lines that arrive while alice types show above her line, which stays as typed.
    alice.type_text("half a thou");
    alice.wait("the partial line", |s| {
        s.last_row() == "[lobby]> half a thou"
    });
    bob.send("hello alice");
    bob.send("are you there?");
    let screen = alice.wait("bob's lines", |s| {
        s.find("[lobby] <bob> are you there?").is_some()
    });
    let (prompt_at, prompt) = screen.last().expect("a prompt");
    assert_eq!(
        prompt, "[lobby]> half a thou",
        "the typed line was broken:\n{screen}"
    );
    let hello = screen.find("[lobby] <bob> hello alice");
    let there = screen.find("[lobby] <bob> are you there?");
    assert!(
        matches!((hello, there), (Some(h), Some(t)) if h < t && t < prompt_at),
        "bob's lines are not above the prompt, in order:\n{screen}"
    );

    // Enter: bob gets the whole line; alice sees it once, as bob sees it.
    let mark = bob.mark();
    alice.type_text("ght");
    alice.keys(&["Enter"]);
    bob.expect(mark, "[lobby] <alice> half a thought");
    let screen = alice.wait("alice's own line", |s| {
        s.find("[lobby] <alice> half a thought").is_some() && s.last_row() == "[lobby]>"
    });
    assert_eq!(
        screen.count("half a thought"),
        1,
        "the line shows more than once:\n{screen}"
    );

    // History: the up key brings the line back; Ctrl-U clears it.
    alice.keys(&["Up"]);
    alice.wait("the line from the history", |s| {
        s.last_row() == "[lobby]> half a thought"
    });
    alice.keys(&["C-u"]);
    alice.wait("an empty prompt", |s| s.last_row() == "[lobby]>");

    // The prompt follows the current room.
    alice.type_text("/join den");
    alice.keys(&["Enter"]);
    alice.wait("the prompt in den", |s| {
        s.find("* alice is in den").is_some() && s.last_row() == "[den]>"
    });
    alice.type_text("/leave den");
    alice.keys(&["Enter"]);
    alice.wait("the prompt back in the lobby", |s| {
        s.find("* you left den; now in lobby").is_some() && s.last_row() == "[lobby]>"
    });

    // A paste over the limit is refused whole: bob gets nothing of it.
    let long = "x".repeat(MAX_LINE_BYTES + 100);
    // tmux writes the keys of one command before those of the next: Enter comes last.
    alice.type_text(&long);
    alice.keys(&["Enter"]);
    let refused = format!(
        "! a line has at most {MAX_LINE_BYTES} bytes; this one has {}: not sent",
        long.len()
    );
    alice.wait("the refusal", |s| {
        s.find(&refused).is_some() && s.last_row() == "[lobby]>"
    });
    let mark = bob.mark();
    alice.type_text("after the paste");
    alice.keys(&["Enter"]);
    bob.expect(mark, "[lobby] <alice> after the paste");
    assert!(!bob.printed("xxxx"), "bob got a part of the refused paste");

    // Ctrl-D leaves: bob sees alice go at once, alice's chat says bye and exits cleanly.
    let mark = bob.mark();
    alice.keys(&["C-d"]);
    bob.expect(mark, "* alice left lobby");
    assert_eq!(
        alice.wait_exit(),
        0,
        "alice's chat failed:\n{}",
        alice.screen()
    );
    alice.wait("the goodbye", |s| s.find("* bye").is_some());
}

/// Two chats take the nick dave at the same instant: each registers it before it hears of the
/// other (they dial alice's address without its peer id, so neither waits for her users
/// first). When the claims meet, one keeps the nick, the other is told and takes a fresh
/// one; every chat then shows distinct nicks, and `/msg` reaches each by its nick.
#[test]
fn two_chats_that_take_one_nick_at_once() {
    let local = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut alice = User::join("alice", &local, Place::Loopback);
    let bare = alice.addrs[0]
        .split("/p2p/")
        .next()
        .expect("an address")
        .to_owned();
    let args = ["--listen", "/ip4/127.0.0.1/tcp/0", "--dial", &bare];
    let mut daves = [
        User::join("dave", &args, Place::Loopback),
        User::join("dave", &args, Place::Loopback),
    ];

    let told = "! nick dave was taken by another user; you are now ";
    let deadline = Instant::now() + WAIT;
    let (loser, fresh) = loop {
        if let Some((at, line)) = daves
            .iter()
            .enumerate()
            .find_map(|(at, dave)| Some((at, dave.line_with(told)?)))
        {
            break (at, line[told.len()..].to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "neither dave was told within {WAIT:?} that the nick went to the other"
        );
        std::thread::sleep(Duration::from_millis(20)); // the poll's pace
    };
    let winner = 1 - loser;
    assert!(
        fresh.starts_with("dave-") && fresh.len() == "dave-1234".len(),
        "the fresh nick {fresh:?}"
    );
    assert!(
        !daves[winner].printed(told),
        "both daves were told they lost the nick"
    );

    // Every chat shows three distinct nicks, each with when it joined the lobby.
    let expected = ["alice", "dave", fresh.as_str()];
    let answer = alice.who_until("lobby", &expected);
    for dave in &mut daves {
        dave.who_until("lobby", &expected);
    }
    assert_joined_recently(&answer, "lobby");

    // /msg reaches each by its nick, and only that one.
    let marks = [daves[0].mark(), daves[1].mark()];
    alice.send("/msg dave to the one who kept it");
    alice.send(&format!("/msg {fresh} to the one who took a fresh nick"));
    daves[winner].expect(marks[winner], "[dm] <alice> to the one who kept it");
    daves[loser].expect(
        marks[loser],
        "[dm] <alice> to the one who took a fresh nick",
    );
    assert!(
        !daves[winner].printed("fresh nick") && !daves[loser].printed("who kept it"),
        "a direct message reached the other dave"
    );

    // The nick the loser lost is the winner's now: the loser cannot take it back.
    let mark = daves[loser].mark();
    daves[loser].send("/nick dave");
    daves[loser].expect(
        mark,
        &format!("! the nick dave is taken; you are still {fresh}"),
    );
}

/// Asserts that every member of an answer to `/who room` shows `(joined HH:MM:SS UTC)`, a
/// time of day within two minutes of now (the chats run on this machine's clock).
fn assert_joined_recently(answer: &str, room: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
        % 86_400;
    let list = answer
        .strip_prefix(&format!("* {room}: "))
        .unwrap_or_else(|| panic!("not an answer to /who {room}: {answer:?}"));
    let members: Vec<&str> = list.split(", ").collect();
    assert_eq!(members.len(), who_nicks(answer, room).len());
    for member in members {
        let time = member
            .split_once(" (joined ")
            .and_then(|(_, rest)| rest.strip_suffix(" UTC)"))
            .unwrap_or_else(|| panic!("no joined time in {member:?} of {answer:?}"));
        let parts: Vec<u64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
        let [h, m, s] = parts[..] else {
            panic!("not HH:MM:SS: {time:?} in {answer:?}")
        };
        let at = h * 3600 + m * 60 + s;
        let apart = now.abs_diff(at).min(86_400 - now.abs_diff(at));
        assert!(
            apart <= 120,
            "{member} joined at {time}, {apart} s from now"
        );
    }
}
