/**
 * Hole punching and SEEK_DATA/SEEK_HOLE for thin volumes, from the small N-API addon in
 * native/blockio.c (built by `make build`). Without it, volumes are thick: unmap writes zeros.
 */
import { loadAddon } from '../common/native';

interface BlockIoAddon {
  punchHole(fd: number, offset: number, length: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  /** Bytes read inline, -1 when the read would wait for the disk, -2 when the file system never reads without waiting. */
  preadNowait(fd: number, buffer: Buffer, offset: number): number;
  /** Bytes written inline, -1 when the write would block, -2 when the file system never writes without blocking. */
  pwriteNowait(fd: number, buffer: Buffer, offset: number): number;
}

export const blockio = process.env.OFFSITE_NO_BLOCKIO === '1' ? undefined : loadAddon<BlockIoAddon>('blockio');

export function punchHole(addon: BlockIoAddon, fd: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => addon.punchHole(fd, offset, length, (err) => (err ? reject(err) : resolve())));
}
