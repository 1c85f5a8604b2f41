import { OffsiteError } from '../common/errors';
import type { LoginStatus, RejectReason } from './constants';

export const IscsiErrorCode = {
  PduTooLarge: 'ISCSI_PDU_TOO_LARGE',
  HeaderDigest: 'ISCSI_HEADER_DIGEST',
  DataDigest: 'ISCSI_DATA_DIGEST',
  Protocol: 'ISCSI_PROTOCOL',
  Text: 'ISCSI_TEXT',
  Login: 'ISCSI_LOGIN',
} as const;

/** A PDU or byte stream the connection cannot continue with. */
export class IscsiError extends OffsiteError {}

/** A PDU the connection answers with a Reject, then continues (or drops, when `fatal`). */
export class PduRejected extends OffsiteError {
  constructor(readonly reason: RejectReason, message: string, readonly fatal = false) {
    super(IscsiErrorCode.Protocol, message);
  }
}

/** A login that ends with this status class/detail. */
export class LoginFailure extends OffsiteError {
  constructor(readonly status: LoginStatus, message: string) {
    super(IscsiErrorCode.Login, message);
  }
}
