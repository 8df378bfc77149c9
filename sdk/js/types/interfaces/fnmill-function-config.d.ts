declare module 'fnmill:function/config@0.1.0' {
  /**
   * The value of a configuration key, or `none` if the function has no such key.
   */
  export function get(key: string): string | undefined;
}
