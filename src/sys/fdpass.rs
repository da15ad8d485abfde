//! Passing file descriptors over a Unix socket (SCM_RIGHTS), and the peer's credentials.
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// Sends `bytes` with `fds` attached, in one message.
pub fn send(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != bytes.len() {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok(())
}

/// Receives one message into `buf`, returning its length and the descriptors it carried.
pub fn recv(stream: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message; nobody
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok((msg.bytes, fds))
}

/// The uid, gid and pid of the process at the other end of `stream`.
pub fn peer(stream: &UnixStream) -> nix::Result<(u32, u32, i32)> {
    let cred = getsockopt(stream, sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.gid(), cred.pid()))
}
