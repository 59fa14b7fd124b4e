//! HdrHistogram interval logs (`--hlog`): one histogram of corrected latency (microseconds)
//! per second of the measured window, in the standard text format other HdrHistogram tools
//! read; and `merge`, which sums the logs of several runs (one per host, say) into one.

use std::collections::BTreeMap;
use std::io::{self, BufWriter};
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogHistogram, IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

use super::shard::histogram;

/// Writes `intervals` (second index -> histogram) as an interval log started at `start`.
pub fn write(
    path: &Path,
    start: SystemTime,
    intervals: &BTreeMap<u64, Histogram<u64>>,
) -> io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = BufWriter::new(file);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("uring-load latency, corrected for coordinated omission, in microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut out, &mut serializer)?;
    for (second, h) in intervals {
        log.write_histogram(
            h,
            Duration::from_secs(*second),
            Duration::from_secs(1),
            None,
        )
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    }
    drop(log);
    io::Write::flush(&mut out)
}

/// Decodes one interval's histogram.
fn decode(entry: &IntervalLogHistogram<'_>) -> io::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry.encoded_histogram())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))
}

/// What `merge` found in the logs.
pub struct Merged {
    pub total: Histogram<u64>,
    /// Seconds covered: the longest log's last interval end.
    pub seconds: f64,
    pub intervals: usize,
}

/// Sums every interval of every log.
pub fn merge(paths: &[impl AsRef<Path>]) -> io::Result<Merged> {
    let mut total = histogram();
    let mut seconds: f64 = 0.0;
    let mut intervals = 0;
    for path in paths {
        let path = path.as_ref();
        let text = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        for entry in IntervalLogIterator::new(&text) {
            let entry = entry.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not an interval log: {e:?}", path.display()),
                )
            })?;
            if let LogEntry::Interval(ilh) = entry {
                let h = decode(&ilh)?;
                total
                    .add(&h)
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
                seconds = seconds.max((ilh.start_timestamp() + ilh.duration()).as_secs_f64());
                intervals += 1;
            }
        }
    }
    Ok(Merged {
        total,
        seconds,
        intervals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_log_merges_back_to_the_same_counts() {
        let dir = std::env::temp_dir().join(format!("c1m-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.hlog"), dir.join("b.hlog"));
        let mut ia = BTreeMap::new();
        let mut h0 = histogram();
        h0.record_n(100, 10).unwrap();
        let mut h1 = histogram();
        h1.record_n(5000, 3).unwrap();
        ia.insert(0, h0);
        ia.insert(1, h1);
        write(&a, SystemTime::now(), &ia).unwrap();
        let mut ib = BTreeMap::new();
        let mut h = histogram();
        h.record_n(250, 7).unwrap();
        ib.insert(0, h);
        write(&b, SystemTime::now(), &ib).unwrap();
        let m = merge(&[&a, &b]).unwrap();
        assert_eq!(m.total.len(), 20);
        assert_eq!(m.intervals, 3);
        assert_eq!(m.seconds, 2.0);
        assert!(m.total.equivalent(m.total.max(), 5000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let p = std::env::temp_dir().join(format!("c1m-bad-{}.hlog", std::process::id()));
        std::fs::write(&p, "1.0,1.0,5.0,notbase64!!\n").unwrap();
        assert!(merge(&[&p]).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
