//! A bundle on the node's own file system.

use std::fs::File;
use std::io::{self, Read};

use super::{BundleStream, FetchError};

/// A local bundle file.
#[derive(Debug)]
pub struct FileStream {
    path: String,
    file: File,
    total: u64,
    read: u64,
}

impl FileStream {
    /// Opens a regular file.
    pub fn open(path: &str) -> Result<FileStream, FetchError> {
        let open_err = |err| FetchError::Open {
            path: path.to_string(),
            err,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        Ok(FileStream {
            path: path.to_string(),
            file,
            total: meta.len(),
            read: 0,
        })
    }
}

impl Read for FileStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf).map_err(|err| {
            FetchError::Read {
                path: self.path.clone(),
                err,
            }
            .into_io()
        })?;
        self.read += n as u64;
        Ok(n)
    }
}

impl BundleStream for FileStream {
    fn total_len(&self) -> u64 {
        self.total
    }

    fn describe(&self) -> String {
        self.path.clone()
    }
}
