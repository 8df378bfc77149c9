/// <reference path="./fnmill-function-types.d.ts" />
declare module 'fnmill:function/handler@0.1.0' {
  /**
   * Handle one event and return the outputs to publish, possibly none.
   */
  export function handle(event: Event): Array<Output>;
  export type Event = import('fnmill:function/types@0.1.0').Event;
  export type Output = import('fnmill:function/types@0.1.0').Output;
  export type Error = import('fnmill:function/types@0.1.0').Error;
}
