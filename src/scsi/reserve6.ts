/**
 * SPC-2 RESERVE(6)/RELEASE(6) (and the 10-byte forms) reservations: one holder I_T nexus per LU
 * (SPC-2 §7.21, §7.17). Other nexuses get RESERVATION CONFLICT for everything except the
 * commands SPC-2 §5.5.1 allows (INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE...). Not persistent.
 */
export class Spc2Reservation {
  private holderItn: string | undefined;

  get holder(): string | undefined {
    return this.holderItn;
  }

  /** RESERVE: GOOD when free or already held by `itn`; false means RESERVATION CONFLICT. */
  reserve(itn: string): boolean {
    if (this.holderItn !== undefined && this.holderItn !== itn) return false;
    this.holderItn = itn;
    return true;
  }

  /** RELEASE: only the holder releases; anyone else gets GOOD with no effect (SPC-2 §7.17). */
  release(itn: string): void {
    if (this.holderItn === itn) this.holderItn = undefined;
  }

  /** Whether `itn` is blocked by a reservation held by another nexus. */
  conflicts(itn: string): boolean {
    return this.holderItn !== undefined && this.holderItn !== itn;
  }

  /** LU reset, target reset, nexus loss of the holder: the reservation goes away. */
  clear(): void {
    this.holderItn = undefined;
  }

  /** Nexus loss: released when the holder's nexus ends (SPC-2 §5.5.1). */
  nexusLost(itn: string): void {
    if (this.holderItn === itn) this.holderItn = undefined;
  }
}
