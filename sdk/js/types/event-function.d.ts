/// <reference path="./interfaces/fnmill-function-config.d.ts" />
/// <reference path="./interfaces/fnmill-function-handler.d.ts" />
/// <reference path="./interfaces/fnmill-function-keyvalue.d.ts" />
/// <reference path="./interfaces/fnmill-function-logging.d.ts" />
/// <reference path="./interfaces/fnmill-function-sql.d.ts" />
/// <reference path="./interfaces/fnmill-function-types.d.ts" />
declare module 'fnmill:function/event-function@0.1.0' {
  export type * as FnmillFunctionConfig010 from 'fnmill:function/config@0.1.0'; // import fnmill:function/config@0.1.0
  export type * as FnmillFunctionKeyvalue010 from 'fnmill:function/keyvalue@0.1.0'; // import fnmill:function/keyvalue@0.1.0
  export type * as FnmillFunctionLogging010 from 'fnmill:function/logging@0.1.0'; // import fnmill:function/logging@0.1.0
  export type * as FnmillFunctionSql010 from 'fnmill:function/sql@0.1.0'; // import fnmill:function/sql@0.1.0
  export type * as FnmillFunctionTypes010 from 'fnmill:function/types@0.1.0'; // import fnmill:function/types@0.1.0
  export * as handler from 'fnmill:function/handler@0.1.0'; // export fnmill:function/handler@0.1.0
}
