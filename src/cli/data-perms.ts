/**
 * Owner-only data (issue 6: "the data directory and key files are created with owner-only
 * permissions"). The commands that write data set the umask first, so that nothing they create
 * (images, journal segments, LevelDB files, state, replay output) is readable by other local
 * users whatever the shell's umask. A data directory that already exists is left as the
 * operator made it, with a warning when group or others may enter it: chmodding it behind the
 * operator's back could break a deliberate set-up (a backup user's group), while saying so
 * at every start is what makes it seen.
 */
import { DataDir } from '../appliance/datadir';

/** Files 600, directories 700. */
export const OWNER_ONLY_UMASK = 0o077;

/** Report (once) a data directory that group or others can reach; nothing when it does not exist yet. */
export async function warnIfOpenToOthers(dataDir: string, warn: (mode: string, message: string) => void): Promise<void> {
  const mode = await new DataDir(dataDir).openToOthers().catch(() => 0);
  if (!mode) return;
  const text = mode.toString(8).padStart(3, '0');
  warn(text, `data directory ${dataDir} is accessible to group or others (mode ${text}): its images and journal hold every byte written; chmod 700 ${dataDir}`);
}
