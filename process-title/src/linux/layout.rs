//! Where the kernel put the command line and the environment, read from
//! `/proc/self/stat` and checked against `/proc/self/maps` (see proc(5)).
//! Pure parsing: the caller reads the files.

use std::io;
use std::ops::Range;

/// The fields of `/proc/self/stat` the title needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Startup {
    /// Field 20: threads in the process now.
    pub(super) num_threads: usize,
    /// Fields 48 and 49 (since Linux 3.5): the argument strings.
    pub(super) arguments: Range<usize>,
    /// Fields 50 and 51: the environment strings.
    pub(super) environment: Range<usize>,
}

/// Fields counted from 1 as in proc(5); field 3 is the first after `comm`.
const NUM_THREADS: usize = 20;
const ARG_START: usize = 48;
const ENV_END: usize = 51;

/// A title that runs past the argument strings is shown up to its first NUL
/// but at most one page from the start (`get_mm_proctitle`); 4096 bytes is
/// the smallest page Linux uses.
const SHOWN_PAST_ARGUMENTS: usize = 4096;

/// Parses the one line of `/proc/self/stat`.
///
/// Field 2 is `(comm)`, and `comm` may hold spaces and parentheses, so the
/// fields are counted from after the last `)`.
pub(super) fn parse_stat(stat: &str) -> io::Result<Startup> {
    let malformed = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/self/stat: {what}"));
    let (_, after_comm) = stat
        .rsplit_once(')')
        .ok_or_else(|| malformed("no `)` after the command name"))?;
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().collect();
    let field = |number: usize| -> io::Result<usize> {
        let text = fields
            .get(number - 3)
            .ok_or_else(|| malformed(&format!("field {number} is missing (Linux before 3.5?)")))?;
        text.parse()
            .map_err(|_| malformed(&format!("field {number} is not a number: {text:?}")))
    };
    Ok(Startup {
        num_threads: field(NUM_THREADS)?,
        arguments: field(ARG_START)?..field(ARG_START + 1)?,
        environment: field(ARG_START + 2)?..field(ENV_END)?,
    })
}

impl Startup {
    /// The bytes the title may use: the argument strings, extended over the
    /// environment strings when they follow directly, which is the only case
    /// in which the kernel shows bytes past the arguments, and then only
    /// [`SHOWN_PAST_ARGUMENTS`] of them (fs/proc/base.c, `get_mm_cmdline`,
    /// `get_mm_proctitle`). `None` when there are no argument bytes (a
    /// kernel that hides the fields shows zeros).
    pub(super) fn title_span(&self) -> Option<Range<usize>> {
        if self.arguments.is_empty() {
            return None;
        }
        let len = match self.reused_environment() {
            Some(environment) => {
                let whole = environment.end - self.arguments.start;
                whole.min(SHOWN_PAST_ARGUMENTS).max(self.arguments.len())
            }
            None => self.arguments.len(),
        };
        Some(self.arguments.start..self.arguments.start + len)
    }

    /// The environment strings that the title span may cover, which must be
    /// moved before the title overwrites them: all of them, so that none is
    /// cut where the span ends.
    pub(super) fn reused_environment(&self) -> Option<Range<usize>> {
        let follows = self.environment.start == self.arguments.end && !self.arguments.is_empty();
        (follows && !self.environment.is_empty()).then(|| self.environment.clone())
    }
}

/// Whether `span` lies inside one private, readable and writable mapping of
/// `/proc/self/maps` (for the argument strings, the main thread's stack).
pub(super) fn in_private_writable_mapping(maps: &str, span: &Range<usize>) -> bool {
    maps.lines().any(|line| {
        let mut columns = line.split_ascii_whitespace();
        let (Some(addresses), Some(permissions)) = (columns.next(), columns.next()) else {
            return false;
        };
        let Some((start, end)) = addresses.split_once('-') else {
            return false;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            return false;
        };
        start <= span.start && span.end <= end && permissions.starts_with("rw") && permissions.ends_with('p')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (Linux 6.x) for a process named `a) b (c`.
    const STAT: &str = "4242 (a) b (c) S 1 4242 4242 34816 4242 4194304 120 0 0 0 0 0 0 0 20 0 3 0 \
        123456 8843264 512 18446744073709551615 94000000000000 94000000100000 140730000000000 0 0 0 0 \
        0 0 0 0 0 17 1 0 0 0 0 0 94000000200000 94000000201000 94000000300000 140730000001000 \
        140730000001020 140730000001020 140730000004000 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let startup = parse_stat(STAT).expect("a well-formed stat line");
        assert_eq!(
            startup,
            Startup {
                num_threads: 3,
                arguments: 140730000001000..140730000001020,
                environment: 140730000001020..140730000004000,
            }
        );
    }

    #[test]
    fn a_stat_line_from_an_old_kernel_is_refused() {
        let old = STAT.split(" 94000000200000").next().expect("the marker is in STAT");
        let error = parse_stat(old).expect_err("fields 48-51 are missing");
        assert!(error.to_string().contains("field 48 is missing"), "{error}");
        assert!(parse_stat("4242 no parenthesis").is_err());
        assert!(parse_stat(&STAT.replace(" 140730000001000 ", " 0x10 ")).is_err());
    }

    fn startup(arguments: Range<usize>, environment: Range<usize>) -> Startup {
        Startup {
            num_threads: 1,
            arguments,
            environment,
        }
    }

    #[test]
    fn the_title_spans_the_environment_when_it_follows_the_arguments() {
        let layout = startup(1000..1020, 1020..4000);
        assert_eq!(layout.title_span(), Some(1000..4000));
        assert_eq!(layout.reused_environment(), Some(1020..4000));
    }

    #[test]
    fn the_title_spans_at_most_a_page_unless_the_arguments_alone_are_longer() {
        let large_environment = startup(1000..1020, 1020..100_000);
        assert_eq!(large_environment.title_span(), Some(1000..5096));
        assert_eq!(large_environment.reused_environment(), Some(1020..100_000));
        let large_arguments = startup(1000..10_000, 10_000..20_000);
        assert_eq!(large_arguments.title_span(), Some(1000..10_000));
    }

    #[test]
    fn the_title_keeps_to_the_arguments_when_the_environment_is_elsewhere() {
        for layout in [startup(1000..1020, 1030..4000), startup(1000..1020, 1020..1020)] {
            assert_eq!(layout.title_span(), Some(1000..1020));
            assert_eq!(layout.reused_environment(), None);
        }
    }

    #[test]
    fn there_is_no_title_span_without_arguments() {
        assert_eq!(startup(0..0, 0..0).title_span(), None);
        // The kernel's fields, not ours: a reversed range must not wrap.
        let reversed = startup(Range { start: 1020, end: 1000 }, 1000..4000);
        assert_eq!(reversed.title_span(), None);
        assert_eq!(reversed.reused_environment(), None);
    }

    const MAPS: &str = "\
55d4c0a00000-55d4c0a21000 r--p 00000000 08:01 1234 /usr/bin/driver
7ffc0000e000-7ffc00030000 rw-p 00000000 00:00 0                          [stack]
7ffc00040000-7ffc00042000 rw-s 00000000 00:05 77 /dev/shm/x
";

    #[test]
    fn the_span_must_be_inside_one_private_writable_mapping() {
        assert!(in_private_writable_mapping(MAPS, &(0x7ffc0002f000..0x7ffc00030000)));
        // Read-only, shared, straddling the end, unmapped.
        assert!(!in_private_writable_mapping(MAPS, &(0x55d4c0a00000..0x55d4c0a00010)));
        assert!(!in_private_writable_mapping(MAPS, &(0x7ffc00040000..0x7ffc00040010)));
        assert!(!in_private_writable_mapping(MAPS, &(0x7ffc0002f000..0x7ffc00030001)));
        assert!(!in_private_writable_mapping(MAPS, &(0x1000..0x1010)));
    }
}
